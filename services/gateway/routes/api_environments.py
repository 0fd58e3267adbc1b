"""``/api/v1/environments``: create (scheduler), list, show, release, redeploy, rollback
(deployer), the console log, and the QEMU hosts an environment may go to."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from labfleet.shared.events.env import (
    ArtifactSelector,
    ConsoleChunk,
    CreateEnv,
    CreateEnvReply,
    DeployReply,
    EnvHostsReply,
    EnvListReply,
    EnvReply,
    EnvSpec,
    EnvView,
    GetEnv,
    HostChoice,
    ListEnvHosts,
    ListEnvs,
    RedeployEnv,
    ReleaseEnv,
    RollbackEnv,
    console_subject,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.logstream import read_chunks
from pydantic import BaseModel

from ..adapters.commands import ask, ask_ok
from ..context import Gateway
from ..deps import CurrentUser, GatewayDep
from ..domain.errors import ApiError

router = APIRouter(prefix="/environments", tags=["environments"])

#: the deployer learns of an environment from ``env.requested`` just after the scheduler
#: answered; a detail asked for at once may wait that long
SETTLE_S = 3.0


class EnvAccepted(BaseModel):
    id: uuid.UUID
    status: str
    host: str | None = None
    position: int | None = None
    estimated_wait_s: float | None = None
    warning: str | None = None
    alternatives: list[str] = []
    url: str


class RedeployBody(BaseModel):
    artifacts: ArtifactSelector | None = None


async def create_env(gw: Gateway, spec: EnvSpec, username: str) -> CreateEnvReply:
    # artifact resolution asks the builder: allow for that round trip
    reply = await ask(gw.bus, CreateEnv(spec=spec, requested_by=username), CreateEnvReply,
                      timeout=30.0, subject=CreateEnv.subject)
    if not reply.ok:
        error = reply.error or ErrorInfo(code="refused", message="the environment was refused")
        details: dict[str, Any] = dict(error.details)
        if reply.alternatives:
            details["alternatives"] = reply.alternatives
        raise ApiError(422, error.code, error.message, error.hint, error.field, **details)
    return reply


async def get_env(gw: Gateway, env_id: uuid.UUID) -> EnvView:
    import asyncio

    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while True:
        try:
            reply = await ask_ok(gw.bus, GetEnv(env_id=env_id), EnvReply)
            break
        except ApiError as exc:
            if exc.code != "not_found" or asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.1)
    assert reply.env is not None
    return reply.env


async def list_envs(gw: Gateway, limit: int = 200) -> list[EnvView]:
    return (await ask_ok(gw.bus, ListEnvs(limit=limit), EnvListReply)).envs


async def list_hosts(gw: Gateway) -> list[HostChoice]:
    return (await ask_ok(gw.bus, ListEnvHosts(), EnvHostsReply)).hosts


def read_console(js: Any, env_id: uuid.UUID, *, follow: bool, idle_timeout: float = 2.0,
                 follow_timeout: float = 3600.0) -> AsyncIterator[ConsoleChunk]:
    """Console chunks from the first one on; with ``follow`` until a deployment's last
    chunk (``eof``) or ``follow_timeout``, otherwise what is stored now."""
    return read_chunks(js, console_subject(env_id), ConsoleChunk, follow=follow,
                       idle_timeout=idle_timeout, follow_timeout=follow_timeout)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=EnvAccepted)
async def create(body: EnvSpec, gw: GatewayDep, user: CurrentUser) -> EnvAccepted:
    """Reserve a QEMU host (or queue with an estimate) and deploy the build's artifacts."""
    reply = await create_env(gw, body, user.username)
    assert reply.env_id is not None
    return EnvAccepted(id=reply.env_id, status=str(reply.status), host=reply.host_name,
                       position=reply.position, estimated_wait_s=reply.estimated_wait_s,
                       warning=reply.warning, alternatives=reply.alternatives,
                       url=f"/api/v1/environments/{reply.env_id}")


@router.get("", response_model=list[EnvView])
async def list_(gw: GatewayDep, _: CurrentUser,
                limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[EnvView]:
    return await list_envs(gw, limit)


@router.get("/hosts", response_model=list[HostChoice])
async def hosts(gw: GatewayDep, _: CurrentUser) -> list[HostChoice]:
    """QEMU hosts with their free capacity now (what the create form's dropdown shows)."""
    return await list_hosts(gw)


@router.get("/{env_id}", response_model=EnvView)
async def show(env_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> EnvView:
    return await get_env(gw, env_id)


async def _act(gw: Gateway, command: Any) -> DeployReply:
    return await ask_ok(gw.bus, command, DeployReply, timeout=60.0)


@router.post("/{env_id}/release", status_code=status.HTTP_200_OK, response_model=EnvView)
async def release(env_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> EnvView:
    """Destroy the VM, remove its files and free the reservation."""
    await _act(gw, ReleaseEnv(env_id=env_id, requested_by=user.username))
    return await get_env(gw, env_id)


@router.post("/{env_id}/redeploy", status_code=status.HTTP_202_ACCEPTED,
             response_model=DeployReply)
async def redeploy(env_id: uuid.UUID, gw: GatewayDep, user: CurrentUser,
                   body: RedeployBody | None = None) -> DeployReply:
    """Deploy again: the same artifacts (retry), or another build's."""
    return await _act(gw, RedeployEnv(env_id=env_id, requested_by=user.username,
                                      artifacts=body.artifacts if body else None))


@router.post("/{env_id}/rollback", status_code=status.HTTP_202_ACCEPTED,
             response_model=DeployReply)
async def rollback(env_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> DeployReply:
    """Deploy the previous deployment's build again."""
    return await _act(gw, RollbackEnv(env_id=env_id, requested_by=user.username))


@router.get("/{env_id}/console", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}})
async def console(env_id: uuid.UUID, gw: GatewayDep, _: CurrentUser,
                  follow: Annotated[bool, Query(description="stream until the boot is judged")]
                  = False) -> StreamingResponse:
    """The serial console as captured during deployments (every byte the guest printed)."""
    await get_env(gw, env_id)  # 404 for an unknown environment, not an endless wait

    async def body() -> AsyncIterator[bytes]:
        async for chunk in read_console(gw.bus.js, env_id, follow=follow):
            yield chunk.text.encode()

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8",
                             headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
