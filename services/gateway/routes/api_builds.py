"""``/api/v1/builds``: submit, list, show, cancel, and the build's log."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from .. import handlers
from ..adapters.state import read_log
from ..deps import CurrentUser, GatewayDep
from ..models import BuildAccepted, BuildCreate, BuildPublic

router = APIRouter(prefix="/builds", tags=["builds"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=BuildAccepted)
async def submit(body: BuildCreate, gw: GatewayDep, user: CurrentUser) -> BuildAccepted:
    """Queue a build; the answer says where it stands in the queue and when it may start."""
    reply = await handlers.submit_build(gw, body, user)
    assert reply.build_id is not None
    return BuildAccepted(id=reply.build_id, position=reply.position,
                         estimated_start_s=reply.estimated_start_s,
                         url=f"/api/v1/builds/{reply.build_id}")


@router.get("", response_model=list[BuildPublic])
async def list_builds(gw: GatewayDep, _: CurrentUser,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[BuildPublic]:
    return [BuildPublic.build(b) for b in await handlers.list_builds(gw, limit)]


@router.get("/{build_id}", response_model=BuildPublic)
async def show(build_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> BuildPublic:
    return BuildPublic.build(await handlers.get_build(gw, build_id))


@router.post("/{build_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             response_model=BuildPublic | None)
async def cancel(build_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> BuildPublic | None:
    view = await handlers.cancel_build(gw, build_id, user)
    return BuildPublic.build(view) if view else None


@router.get("/{build_id}/log", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}})
async def log(build_id: uuid.UUID, gw: GatewayDep, _: CurrentUser,
              follow: Annotated[bool, Query(description="stream until the build ends")] = False
              ) -> StreamingResponse:
    """The build's output; with ``follow=1`` the response stays open until the last chunk."""
    await handlers.get_build(gw, build_id)  # 404 for an unknown build, not an endless wait

    async def body() -> AsyncIterator[bytes]:
        async for chunk in read_log(gw.bus.js, build_id, follow=follow):
            yield chunk.text.encode()

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8",
                             headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
