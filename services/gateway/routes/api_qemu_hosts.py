"""``/api/v1/qemu-hosts``: register, list, show (running VMs, network, history), remove."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from ..deps import CurrentUser, GatewayDep
from . import qemu_hosts_support as qemu
from .qemu_hosts_support import QemuHostCreate, QemuHostDetail, QemuHostList, QemuHostPublic

router = APIRouter(prefix="/qemu-hosts", tags=["QEMU hosts"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=QemuHostPublic)
async def register(body: QemuHostCreate, gw: GatewayDep, user: CurrentUser,
                   response: Response) -> QemuHostPublic:
    """Validate over SSH and libvirt (pinned host key), detect KVM and guest emulators, add
    the host.  Same shape as ``GET /qemu-hosts/{id}`` (status ``unknown`` until polled)."""
    view = await qemu.register(gw, body, user)
    response.headers["Location"] = f"/api/v1/qemu-hosts/{view.resource_id}"
    return QemuHostPublic.build(view, None, None)


@router.get("", response_model=QemuHostList)
async def list_hosts(gw: GatewayDep, _: CurrentUser,
                     status: Annotated[str | None, Query()] = None) -> QemuHostList:
    return await qemu.listing(gw, status)


@router.get("/{host_id}", response_model=QemuHostDetail)
async def show(host_id: uuid.UUID, gw: GatewayDep, _: CurrentUser,
               window: Annotated[str, Query(description="history: hour, day or week")] = "hour"
               ) -> QemuHostDetail:
    return await qemu.detail(gw, host_id, window)


@router.delete("/{host_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(host_id: uuid.UUID, gw: GatewayDep, user: CurrentUser) -> Response:
    await qemu.remove(gw, host_id, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
