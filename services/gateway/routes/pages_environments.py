"""Pages: environments with the create form (hosts with their free capacity, or Auto),
and one environment with its status, boot progress, live console and retry/rollback."""
from __future__ import annotations

import asyncio
import contextlib
import html
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from labfleet.shared.events.env import (
    ArtifactSelector,
    EnvSpec,
    EnvView,
    HostChoice,
    RedeployEnv,
    ReleaseEnv,
    RollbackEnv,
)
from labfleet.shared.events.resource import Arch
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError
from .api_environments import _act, create_env, get_env, list_envs, list_hosts, read_console

router = APIRouter(include_in_schema=False)

#: how far along a boot is, for the progress bar
PROGRESS = {"queued": 5, "allocated": 15, "deploying": 40, "booting": 75, "running": 100,
            "failed": 100, "releasing": 100, "released": 100, "rejected": 100}


async def _list_page(request: Request, gw: Gateway, user: Any, form: dict[str, Any],
                     status_code: int = 200) -> Response:
    envs: list[EnvView] = []
    hosts: list[HostChoice] = []
    error = None
    try:
        envs = await list_envs(gw, limit=200)
    except ApiError as exc:
        error = exc
    with contextlib.suppress(ApiError):
        hosts = await list_hosts(gw)
    return gw.templates.TemplateResponse(request, "environments.html", {
        "user": user, "envs": envs, "hosts": hosts, "archs": list(Arch), "error": error,
        "form": form}, status_code=status_code)


@router.get("/environments", response_class=HTMLResponse)
async def environments(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    return await _list_page(request, gw, user, {"values": {
        "vcpus": "1", "memory_mb": "256", "boot_marker": "LABFLEET-BOOT-OK",
        "boot_timeout_s": "120", "selector": "build_id"}, "errors": {}})


@router.post("/environments", response_class=HTMLResponse)
async def create(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    raw = await request.form()
    values = {k: v for k, v in raw.items() if isinstance(v, str)}
    errors: dict[str, str] = {}
    alternatives: list[str] = []
    try:
        which = values.get("selector", "build_id")
        wanted = values.get("artifact", "").strip()
        selector = ArtifactSelector(**{which: wanted or None},
                                    repo_url=values.get("repo_url") or None)
        spec = EnvSpec(
            arch=values.get("arch", ""), vcpus=values.get("vcpus") or 1,
            memory_mb=values.get("memory_mb") or 256, kvm=values.get("kvm") == "on",
            artifacts=selector, host=values.get("host") or None,
            boot_marker=values.get("boot_marker") or "LABFLEET-BOOT-OK",
            cmdline=values.get("cmdline", ""), boot_timeout_s=values.get("boot_timeout_s") or 120,
            name=values.get("name", ""))
        reply = await create_env(gw, spec, user.username)
        return RedirectResponse(f"/environments/{reply.env_id}", status_code=303)
    except ValidationError as exc:
        for e in exc.errors():
            loc = str(e["loc"][0]) if e["loc"] else "_form"
            errors.setdefault("artifact" if loc in ("build_id", "commit", "branch") else loc,
                              str(e["msg"]))
    except ApiError as exc:
        field = (exc.field or "_form").split(".")[0]
        errors["artifact" if field == "artifacts" else field] = exc.message + (
            f" — {exc.hint}" if exc.hint else "")
        alternatives = [str(a) for a in exc.details.get("alternatives", [])]  # type: ignore[union-attr]
    form = {"values": values, "errors": errors, "alternatives": alternatives}
    return await _list_page(request, gw, user, form, status_code=422)


@router.get("/environments/{env_id}", response_class=HTMLResponse)
async def env_page(request: Request, env_id: uuid.UUID, gw: GatewayDep, user: PageUser
                   ) -> Response:
    try:
        env = await get_env(gw, env_id)
    except ApiError as exc:
        return gw.templates.TemplateResponse(request, "error.html", {
            "user": user, "status": exc.status, "message": exc.message, "hint": exc.hint},
            status_code=exc.status)
    return gw.templates.TemplateResponse(request, "environment.html", {
        "user": user, "e": env, "progress": PROGRESS.get(env.status.value, 0),
        "message": request.query_params.get("message")})


@router.post("/environments/{env_id}/{action}", response_class=HTMLResponse)
async def act(env_id: uuid.UUID, action: str, gw: GatewayDep, user: PageUser) -> Response:
    commands = {"release": ReleaseEnv, "redeploy": RedeployEnv, "rollback": RollbackEnv}
    if action not in commands:
        return RedirectResponse(f"/environments/{env_id}", status_code=303)
    message = f"{action} started"
    try:
        await _act(gw, commands[action](env_id=env_id, requested_by=user.username))
    except ApiError as exc:
        message = exc.message
    from urllib.parse import quote

    return RedirectResponse(f"/environments/{env_id}?message={quote(message)}", status_code=303)


@router.get("/environments/{env_id}/console/stream")
async def console_stream(env_id: uuid.UUID, gw: GatewayDep, _: PageUser) -> EventSourceResponse:
    """The console from its first chunk, then live; the status alongside; ``eof`` when the
    boot is judged."""
    async def events() -> AsyncIterator[dict[str, str]]:
        last_status = None
        async for chunk in read_console(gw.bus.js, env_id, follow=True, follow_timeout=5.0):
            text = html.escape(chunk.text).replace("\r", "").replace("\n", "&#10;")
            yield {"event": "console", "data": text}
        # the console went quiet or its deployment ended: report the status until it settles
        for _ in range(600):
            with contextlib.suppress(ApiError):
                env = await get_env(gw, env_id)
                if env.status.value != last_status:
                    last_status = env.status.value
                    yield {"event": "status", "data": html.escape(
                        f"{env.status.value}" + (f": {env.error.message}" if env.error else ""))}
                if env.status.value in ("running", "failed", "released", "rejected"):
                    break
            await asyncio.sleep(1.0)
        yield {"event": "eof", "data": ""}

    return EventSourceResponse(events(), ping=15)
