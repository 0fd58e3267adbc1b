"""``/api/v1/resources``: every registered resource, and its host key (check, accept)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter

from .. import host_keys
from ..deps import CurrentUser, GatewayDep
from ..host_keys import ERRORS, HostKeyAccept, HostKeyStatus, ResourceSummary

router = APIRouter(prefix="/resources", tags=["resources"])


@router.get("", response_model=list[ResourceSummary],
            responses={k: v for k, v in ERRORS.items() if k in (401, 503, 504)})
async def list_resources(gw: GatewayDep, _: CurrentUser) -> list[ResourceSummary]:
    """Build servers, QEMU hosts and the rest, with their pinned host key fingerprints."""
    return await host_keys.list_resources(gw)


@router.get("/{resource_id}/host-key", response_model=HostKeyStatus, responses=ERRORS)
async def check_host_key(resource_id: uuid.UUID, gw: GatewayDep,
                         _: CurrentUser) -> HostKeyStatus:
    """Ask the host for its key now: the pinned and the presented fingerprint, and
    whether they match."""
    return await host_keys.check(gw, resource_id)


@router.post("/{resource_id}/host-key/accept", response_model=HostKeyStatus,
             responses={**ERRORS, 409: {
                 "model": host_keys.ErrorBody,
                 "description": "the host presents another key than the fingerprint given "
                                "(code host_key_conflict); nothing was changed"}})
async def accept_host_key(resource_id: uuid.UUID, body: HostKeyAccept, gw: GatewayDep,
                          user: CurrentUser) -> HostKeyStatus:
    """Pin the key the host presents now, if it is the one whose fingerprint is given (so
    exactly the key the admin saw is accepted); written to the audit log with who and
    both fingerprints."""
    return await host_keys.accept(gw, resource_id, body.fingerprint, user)
