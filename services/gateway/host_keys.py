"""Host keys: what a resource presents against what is pinned, and accepting a new one.

Shared by the API (``/api/v1/resources/{id}/host-key``), the host-key page and, through
the API, the CLI; the inventory asks the host and keeps the audit row.
"""
from __future__ import annotations

import uuid

from labfleet.shared.events.resource import (
    AcceptHostKey,
    CheckHostKey,
    HostKeyReply,
    ListResources,
    ResourceListReply,
    ResourceView,
)
from pydantic import BaseModel, ConfigDict, Field

from .adapters.accounts import User
from .adapters.commands import ask_ok
from .context import Gateway
from .models import ErrorBody

#: the inventory asks the host over SSH (up to its connect timeout) before answering
HOST_KEY_TIMEOUT_S = 25.0

#: the refusals of the host-key operations, as the OpenAPI document declares them
ERRORS = {
    401: {"model": ErrorBody, "description": "no or an invalid API token"},
    404: {"model": ErrorBody, "description": "no resource has this id"},
    422: {"model": ErrorBody, "description": "the host could not be asked for its key "
                                             "(unreachable, refused), or a malformed request"},
    503: {"model": ErrorBody, "description": "the inventory service is not running"},
    504: {"model": ErrorBody, "description": "the inventory service did not answer in time"},
}


class ResourceSummary(BaseModel):
    id: uuid.UUID
    kind: str
    name: str
    address: str
    port: int
    username: str
    lifecycle: str
    host_key_fingerprint: str | None = None
    #: the monitor's view: online, degraded, offline, ... (unknown before the first poll)
    status: str = "unknown"
    reason: str = ""

    @classmethod
    def of(cls, view: ResourceView, status: str = "unknown", reason: str = ""
           ) -> ResourceSummary:
        return cls(id=view.resource_id, kind=view.kind.value, name=view.name,
                   address=view.ssh.address, port=view.ssh.port, username=view.ssh.username,
                   lifecycle=view.lifecycle.value,
                   host_key_fingerprint=view.ssh.host_key_fingerprint, status=status,
                   reason=reason)


class HostKeyStatus(BaseModel):
    resource_id: uuid.UUID
    name: str
    kind: str
    address: str
    port: int
    #: the fingerprint pinned now (after an accept: the new one)
    pinned_fingerprint: str | None
    #: the fingerprint of the key the host presents now
    presented_fingerprint: str | None
    matches: bool
    #: this answer is to an accept that pinned the presented key
    accepted: bool = False
    #: the fingerprint pinned before the accept
    previous_fingerprint: str | None = None

    @classmethod
    def of(cls, reply: HostKeyReply) -> HostKeyStatus:
        assert reply.resource is not None
        view = reply.resource
        return cls(resource_id=view.resource_id, name=view.name, kind=view.kind.value,
                   address=view.ssh.address, port=view.ssh.port,
                   pinned_fingerprint=reply.pinned_fingerprint,
                   presented_fingerprint=reply.presented_fingerprint,
                   matches=bool(reply.matches), accepted=reply.accepted,
                   previous_fingerprint=reply.previous_fingerprint)


class HostKeyAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(
        min_length=1, max_length=200,
        description="the presented fingerprint being accepted (SHA256:...), as "
                    "GET .../host-key showed it; another key presented now is refused (409)")


async def list_resources(gw: Gateway) -> list[ResourceSummary]:
    reply = await ask_ok(gw.bus, ListResources(), ResourceListReply)
    out = []
    for view in reply.resources:
        health = gw.hub.health.get(view.resource_id) or await gw.state.health(view.resource_id)
        out.append(ResourceSummary.of(view, health.status.value if health else "unknown",
                                      health.reason if health else ""))
    return out


async def check(gw: Gateway, resource_id: uuid.UUID) -> HostKeyStatus:
    reply = await ask_ok(gw.bus, CheckHostKey(resource_id=resource_id), HostKeyReply,
                         timeout=HOST_KEY_TIMEOUT_S)
    return HostKeyStatus.of(reply)


async def accept(gw: Gateway, resource_id: uuid.UUID, fingerprint: str,
                 user: User) -> HostKeyStatus:
    reply = await ask_ok(gw.bus, AcceptHostKey(resource_id=resource_id, fingerprint=fingerprint,
                                               requested_by=user.username), HostKeyReply,
                         timeout=HOST_KEY_TIMEOUT_S)
    gw.hub.forget_resources()
    if reply.resource is not None:
        gw.hub.remember(reply.resource)
    return HostKeyStatus.of(reply)
