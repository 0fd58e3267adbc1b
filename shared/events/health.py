"""Health domain: samples and status transitions (owner: monitor)."""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .envelope import Event
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
