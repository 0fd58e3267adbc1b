"""``/api/v1/builds``: submit, list, show, cancel, pin, tag, and the build's log."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from .. import fleet, handlers
from ..adapters.state import read_log
from ..deps import CurrentUser, GatewayDep
from ..models import BuildAccepted, BuildCreate, BuildDetail, BuildPin, BuildPublic, BuildTags

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


@router.get("/{build_id}", response_model=BuildDetail)
async def show(build_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> BuildDetail:
    """The build with its server, duration, artifacts (sizes, links, locations) and the
    server's CPU and memory while it ran."""
    return await fleet.build_detail(gw, build_id)


@router.post("/{build_id}/pin", response_model=BuildPublic)
async def pin(build_id: uuid.UUID, gw: GatewayDep, user: CurrentUser,
              body: BuildPin | None = None) -> BuildPublic:
    """Keep the build's artifacts past the retention period (``{"pinned": false}`` undoes)."""
    return await fleet.pin_build(gw, build_id, body.pinned if body else True, user)


@router.post("/{build_id}/tag", response_model=BuildPublic)
async def tag(build_id: uuid.UUID, body: BuildTags, gw: GatewayDep,
              user: CurrentUser) -> BuildPublic:
    """Add tags (or remove them with ``remove``); tagged builds are kept by retention."""
    return await fleet.tag_build(gw, build_id, body.tags, body.remove, user)


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
