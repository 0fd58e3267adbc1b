"""QEMU hosts for the API and the pages: the models they exchange and what each request does.

Registration goes to the inventory (``resource.cmd.register_qemu_host``); status, samples
and history come from the monitor's KV buckets and ``health.cmd.*``; the detail page's
running VMs and network configuration are read live by the monitor over the host's own
libvirt and SSH connections (``health.cmd.host_details``).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.fields import Address, Fingerprint, Hostname, Name, PlainString
from labfleet.shared.events.health import (
    GetHostDetails,
    GetSampleHistory,
    HostDetailsReply,
    HostSample,
    NetInterface,
    SampleHistoryReply,
    VmInfo,
)
from labfleet.shared.events.resource import (
    Arch,
    GetResource,
    Lifecycle,
    ListResources,
    QemuHostCapabilities,
    RegisterQemuHost,
    RegistrationReply,
    RemoveResource,
    ResourceKind,
    ResourceListReply,
    ResourceReply,
    ResourceView,
    SshTarget,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..adapters.accounts import User
from ..adapters.commands import ask_ok
from ..adapters.state import HealthState
from ..context import Gateway
from ..domain.errors import ApiError

REGISTER_TIMEOUT_S = 90.0

#: history windows of the detail page: (length, averaging bucket in seconds)
WINDOWS: dict[str, tuple[timedelta, int | None]] = {
    "hour": (timedelta(hours=1), None),
    "day": (timedelta(days=1), 300),
    "week": (timedelta(days=7), 1800),
}


class QemuHostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hostname: Hostname = Field(description="unique name (compared without case)")
    address: Address
    ssh_port: int = Field(default=22, ge=1, le=65535)
    username: Name = Field(description="SSH user that may use qemu:///system")
    password: SecretStr | None = None
    private_key: SecretStr | None = Field(default=None, description="OpenSSH private key text")
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    expected_host_key_fingerprint: Fingerprint | None = None
    guest_architectures: list[Arch] = Field(
        default_factory=list, description="guests the host must run; refused if one lacks QEMU")
    allocatable_vcpus: int | None = Field(default=None, ge=1,
                                          description="vCPUs VMs may take; default all cores")
    allocatable_memory_mb: int | None = Field(
        default=None, ge=64, description="memory VMs may take; default all but 1 GiB")
    image_dir: PlainString | None = Field(default=None,
                                          description="default ~/labfleet-images")
    libvirt_uri: PlainString | None = Field(
        default=None, description="optional; labfleet derives qemu+ssh://user@address:port/system")

    @field_validator("libvirt_uri")
    @classmethod
    def _ssh_uri(cls, v: str | None) -> str | None:
        if v and not v.startswith("qemu+ssh://"):
            raise ValueError("only qemu+ssh://user@host[:port]/system is supported; labfleet "
                             "connects with the pinned host key itself")
        return v

    def command(self, requested_by: str) -> RegisterQemuHost:
        fields = {k: getattr(self, k) for k in type(self).model_fields if k != "libvirt_uri"}
        return RegisterQemuHost(**fields, requested_by=requested_by)


class QemuHostPublic(BaseModel):
    id: uuid.UUID
    name: str
    ssh: SshTarget
    labels: dict[str, str]
    lifecycle: Lifecycle
    registered_at: datetime | None
    qemu: QemuHostCapabilities | None
    status: str
    health: HealthState | None
    sample: HostSample | None
    vm_count: int | None

    @classmethod
    def build(cls, view: ResourceView, health: HealthState | None, sample: HostSample | None
              ) -> QemuHostPublic:
        return cls(id=view.resource_id, name=view.name, ssh=view.ssh, labels=view.labels,
                   lifecycle=view.lifecycle, registered_at=view.registered_at, qemu=view.qemu,
                   status=health.status.value if health else "unknown", health=health,
                   sample=sample, vm_count=sample.vm_count if sample else None)


class QemuHostDetail(QemuHostPublic):
    vms: list[VmInfo] = Field(default_factory=list)
    interfaces: list[NetInterface] = Field(default_factory=list)
    #: parts of the live details that could not be read (the rest is shown)
    problems: list[str] = Field(default_factory=list)
    window: str = "hour"
    history: list[HostSample] = Field(default_factory=list)
    history_error: ErrorInfo | None = None


class QemuHostList(BaseModel):
    items: list[QemuHostPublic]
    total: int


# ---- requests -------------------------------------------------------------------------


async def register(gw: Gateway, body: QemuHostCreate, user: User) -> ResourceView:
    reply = await ask_ok(gw.bus, body.command(requested_by=user.username), RegistrationReply,
                         timeout=REGISTER_TIMEOUT_S)
    if reply.resource is None:
        raise ApiError(502, "bad_reply", "inventory accepted the host but sent no record")
    return reply.resource


async def load(gw: Gateway) -> list[ResourceView]:
    reply = await ask_ok(gw.bus, ListResources(kind=ResourceKind.QEMU_HOST), ResourceListReply,
                         timeout=15.0)
    return [r for r in reply.resources if r.kind == ResourceKind.QEMU_HOST]


async def public(gw: Gateway, view: ResourceView) -> QemuHostPublic:
    health = gw.hub.health.get(view.resource_id) or await gw.state.health(view.resource_id)
    sample = gw.hub.samples.get(view.resource_id) or \
        await gw.state.latest_sample(view.resource_id)
    return QemuHostPublic.build(view, health, sample)


async def listing(gw: Gateway, status: str | None = None) -> QemuHostList:
    await gw.hub.seed()
    views = sorted(await load(gw), key=lambda v: v.name)
    items = list(await asyncio.gather(*(public(gw, v) for v in views)))
    if status:
        items = [i for i in items if i.status == status]
    return QemuHostList(items=items, total=len(items))


async def get(gw: Gateway, host_id: uuid.UUID) -> ResourceView:
    reply = await ask_ok(gw.bus, GetResource(resource_id=host_id), ResourceReply)
    if reply.resource is None or reply.resource.kind != ResourceKind.QEMU_HOST:
        raise ApiError(404, "not_found", f"no QEMU host has the id {host_id}",
                       hint="list them with GET /api/v1/qemu-hosts")
    return reply.resource


async def detail(gw: Gateway, host_id: uuid.UUID, window: str = "hour") -> QemuHostDetail:
    if window not in WINDOWS:
        raise ApiError(422, "invalid_window", f"unknown history window {window!r}",
                       hint=f"use one of: {', '.join(WINDOWS)}", field="window")
    view = await get(gw, host_id)
    span, bucket = WINDOWS[window]
    base, history, live = await asyncio.gather(
        public(gw, view),
        _ask(gw, GetSampleHistory(resource_id=host_id, since=datetime.now(UTC) - span,
                                  bucket_s=bucket, limit=2000), SampleHistoryReply),
        _ask(gw, GetHostDetails(resource_id=host_id), HostDetailsReply, timeout=20.0))
    out = QemuHostDetail(**base.model_dump(), window=window)
    if isinstance(history, ApiError):
        out.history_error = ErrorInfo(code=history.code, message=history.message,
                                      hint=history.hint)
    else:
        out.history = history.samples
    if isinstance(live, ApiError):
        out.problems.append(f"running VMs and network ({live.code}): {live.message}")
    else:
        out.vms, out.interfaces, out.problems = live.vms, live.interfaces, list(live.problems)
    return out


async def _ask(gw: Gateway, command, reply_type, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    try:
        return await ask_ok(gw.bus, command, reply_type, timeout=timeout)
    except ApiError as exc:  # the page still shows the rest; the error says what is missing
        return exc


async def remove(gw: Gateway, host_id: uuid.UUID, user: User) -> None:
    await get(gw, host_id)  # 404 for an id that is not a QEMU host
    await ask_ok(gw.bus, RemoveResource(resource_id=host_id, requested_by=user.username),
                 ResourceReply)
    gw.hub.forget_resources()
