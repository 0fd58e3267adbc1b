"""``/api/v1/build-servers``: register, list, show, maintenance, options, decommission."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from .. import fleet, handlers
from ..deps import CurrentUser, GatewayDep
from ..models import (
    BuildServerCreate,
    BuildServerDetail,
    BuildServerPage,
    BuildServerPublic,
    MaintenanceOverview,
    MaintenanceSet,
    ServerOptions,
)

router = APIRouter(prefix="/build-servers", tags=["build servers"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BuildServerPublic)
async def register(body: BuildServerCreate, gw: GatewayDep, user: CurrentUser,
                   response: Response) -> BuildServerPublic:
    """Connect over SSH, detect capabilities and add the server to the pool.

    The answer has the same shape as ``GET /build-servers/{id}`` (status ``unknown`` until
    the monitor's first poll).
    """
    view = await handlers.register_build_server(gw, body, user)
    response.headers["Location"] = f"/api/v1/build-servers/{view.resource_id}"
    return BuildServerPublic.build(view, None, None, 0)


@router.get("", response_model=BuildServerPage)
async def list_servers(gw: GatewayDep, _: CurrentUser,
                       q: Annotated[str | None, Query(description="words to match")] = None,
                       status: Annotated[str | None, Query()] = None,
                       page: Annotated[int, Query(ge=1)] = 1,
                       size: Annotated[int, Query(ge=1, le=200)] = 50) -> BuildServerPage:
    window = await handlers.build_server_page(gw, query=q, status=status, page=page, size=size)
    return BuildServerPage(items=window.items, total=window.total, page=window.page,
                           size=window.size)


@router.get("/maintenance", response_model=MaintenanceOverview)
async def maintenance(gw: GatewayDep, _: CurrentUser) -> MaintenanceOverview:
    """Current and upcoming maintenance windows with the capacity they take away."""
    return await fleet.maintenance_overview(gw)


@router.get("/{server_id}", response_model=BuildServerDetail)
async def show(server_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> BuildServerDetail:
    """The server with its samples, build history, average build times, current builds
    and the number of waiting builds it could take."""
    return await fleet.server_detail(gw, server_id)


@router.post("/{server_id}/maintenance", response_model=BuildServerPublic)
async def set_maintenance(server_id: uuid.UUID, body: MaintenanceSet, gw: GatewayDep,
                          user: CurrentUser) -> BuildServerPublic:
    """``on``: no new builds (running ones finish, queued ones go elsewhere), now or for the
    window ``start``–``end``; ``on: false`` lifts it."""
    return await fleet.set_maintenance(gw, server_id, body, user)


@router.patch("/{server_id}/options", response_model=BuildServerPublic)
async def set_options(server_id: uuid.UUID, body: ServerOptions, gw: GatewayDep,
                      user: CurrentUser) -> BuildServerPublic:
    return await fleet.set_options(gw, server_id, body.pause_on_low_disk, user)


@router.delete("/{server_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(server_id: uuid.UUID, gw: GatewayDep, user: CurrentUser,
                 force: Annotated[bool, Query(description="even with active builds")] = False
                 ) -> Response:
    """Decommission: refused (409) while builds run there, unless ``force``."""
    await fleet.decommission(gw, server_id, force, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


__all__ = ["BuildServerPublic", "router"]
