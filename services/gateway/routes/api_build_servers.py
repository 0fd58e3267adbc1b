"""``/api/v1/build-servers``: register, list, show, remove."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from .. import handlers
from ..deps import CurrentUser, GatewayDep
from ..models import BuildServerCreate, BuildServerDetail, BuildServerPage, BuildServerPublic

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


@router.get("/{server_id}", response_model=BuildServerDetail)
async def show(server_id: uuid.UUID, gw: GatewayDep, _: CurrentUser) -> BuildServerDetail:
    return await handlers.build_server_detail(gw, server_id)


@router.delete("/{server_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(server_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> Response:
    await handlers.remove_build_server(gw, server_id, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


__all__ = ["BuildServerPublic", "router"]
