"""Health domain: samples and status transitions (owner: monitor)."""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .envelope import Command, Event, Reply
from .resource import ResourceKind


class HealthStatus(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    MAINTENANCE = "maintenance"
    UNKNOWN = "unknown"


class HostSample(BaseModel):
    """One poll of a host: what a dashboard shows and the scheduler weighs."""

    model_config = ConfigDict(extra="ignore")

    resource_id: uuid.UUID
    kind: ResourceKind
    at: datetime
    cpu_pct: float
    load1: float
    cpu_cores: int
    mem_total_mb: int
    mem_used_mb: int
    disk_total_gb: float
    disk_free_gb: float
    #: compiler processes running (cc1, cc1plus, ld, make) — "active compilation"
    compile_procs: int = 0
    #: QEMU hosts: running libvirt domains (None for other kinds, or when libvirt did not answer)
    vm_count: int | None = None
    vms: list[str] = Field(default_factory=list)


#: JetStream KV buckets (key = resource id) holding current state for dashboards
SAMPLES_BUCKET = "samples"
HEALTH_BUCKET = "health"


class HealthRecord(BaseModel):
    """The value kept in KV ``health``: a resource's status as the monitor last judged it."""

    model_config = ConfigDict(extra="ignore")

    resource_id: uuid.UUID
    kind: ResourceKind
    status: HealthStatus
    reason: str = ""
    since: datetime | None = None
    last_seen: datetime | None = None
    warnings: list[str] = Field(default_factory=list)
    consecutive_failures: int = 0
    #: the last good sample, kept while the host is offline ("last known status")
    last_sample: HostSample | None = None


class HostSampled(Event):
    """Published on ``sample.<kind>.<resource_id>``; the latest is also in KV ``samples``."""

    subject: ClassVar[str] = "sample.{kind}.{resource_id}"
    sample: HostSample


class HealthChanged(Event):
    subject: ClassVar[str] = "health.changed"
    resource_id: uuid.UUID
    kind: ResourceKind
    status: HealthStatus
    previous: HealthStatus
    reason: str = ""
    last_seen: datetime | None = None
    warnings: list[str] = []


class GetSampleHistory(Command):
    """Samples of one resource since a time, oldest first (the detail page's plots)."""

    subject: ClassVar[str] = "health.cmd.history"
    resource_id: uuid.UUID
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=2000, ge=1, le=20000)
    #: average the samples over buckets of this many seconds (plots of a day or a week)
    bucket_s: int | None = Field(default=None, ge=1, le=86400)


class SampleHistoryReply(Reply):
    samples: list[HostSample] = Field(default_factory=list)


class VmInfo(BaseModel):
    """A libvirt domain on a QEMU host, as libvirt reports it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    uuid: str = ""
    state: str = ""
    vcpus: int = 0
    memory_mb: int = 0
    #: libvirt ``<metadata>``/``<title>``/``<description>`` text (who deployed what)
    title: str = ""
    description: str = ""


class NetInterface(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    state: str = ""
    mac: str = ""
    mtu: int | None = None
    addresses: list[str] = Field(default_factory=list)


class GetHostDetails(Command):
    """What a host runs now: its VMs (QEMU hosts, from libvirt) and network configuration."""

    subject: ClassVar[str] = "health.cmd.host_details"
    resource_id: uuid.UUID


class HostDetailsReply(Reply):
    vms: list[VmInfo] = Field(default_factory=list)
    interfaces: list[NetInterface] = Field(default_factory=list)
    libvirt_networks: list[str] = Field(default_factory=list)
    #: what could not be read, said per part (the rest is still shown)
    problems: list[str] = Field(default_factory=list)
