"""What the API accepts and returns — one model per use, never the internal messages as-is
where they would leak secrets or internals."""
from __future__ import annotations

import uuid
from datetime import datetime

from labfleet.shared.events.build import (
    ArtifactInfo,
    BuildPhase,
    BuildSpec,
    BuildStatus,
    BuildView,
    Tag,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.fields import (
    Address,
    Fingerprint,
    Hostname,
    Name,
    PlainString,
    Text,
)
from labfleet.shared.events.health import HostSample
from labfleet.shared.events.resource import (
    Arch,
    BuildServerCapabilities,
    Lifecycle,
    MaintenanceWindow,
    RegisterBuildServer,
    ResourceView,
    SshTarget,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .adapters.state import HealthState
from .domain.history import duration_s as build_duration


class ErrorBody(BaseModel):
    error: ErrorInfo


# ---- build servers --------------------------------------------------------------------


class BuildServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hostname: Hostname = Field(description="unique name (compared without case)")
    address: Address
    ssh_port: int = Field(default=22, ge=1, le=65535)
    username: Name
    password: SecretStr | None = None
    private_key: SecretStr | None = Field(default=None, description="OpenSSH private key text")
    architectures: list[Arch] = Field(default_factory=list)
    build_configs: list[Name] = Field(default_factory=list)
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    expected_host_key_fingerprint: Fingerprint | None = None
    work_dir: PlainString | None = Field(default=None,
                                         description="where builds run; default: home")

    def command(self, requested_by: str) -> RegisterBuildServer:
        fields = {k: getattr(self, k) for k in type(self).model_fields}
        return RegisterBuildServer(**fields, requested_by=requested_by)


class BuildServerPublic(BaseModel):
    id: uuid.UUID
    name: str
    ssh: SshTarget
    architectures: list[Arch]
    build_configs: list[str]
    labels: dict[str, str]
    lifecycle: Lifecycle
    registered_at: datetime | None
    capabilities: BuildServerCapabilities | None
    status: str
    health: HealthState | None
    sample: HostSample | None
    active_builds: int
    #: the current or next maintenance window
    maintenance: MaintenanceWindow | None = None
    pause_on_low_disk: bool = False

    @classmethod
    def build(cls, view: ResourceView, health: HealthState | None, sample: HostSample | None,
              active_builds: int) -> BuildServerPublic:
        return cls(id=view.resource_id, name=view.name, ssh=view.ssh,
                   architectures=view.architectures, build_configs=view.build_configs,
                   labels=view.labels, lifecycle=view.lifecycle,
                   registered_at=view.registered_at, capabilities=view.capabilities,
                   status=(health.status.value if health else "unknown"), health=health,
                   sample=sample, active_builds=active_builds,
                   maintenance=view.maintenance, pause_on_low_disk=view.pause_on_low_disk)


class BuildServerDetail(BuildServerPublic):
    history: list[HostSample] = Field(default_factory=list)
    history_error: ErrorInfo | None = None
    #: the newest builds placed on this server, newest first
    builds: list[BuildPublic] = Field(default_factory=list)
    builds_error: ErrorInfo | None = None
    average_build_times: list[dict[str, object]] = Field(default_factory=list)
    current_builds: list[BuildPublic] = Field(default_factory=list)
    #: builds waiting for a server that this one could take
    queue_depth: int = 0


class MaintenanceSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on: bool = True
    reason: Text = Field(default="", max_length=500)
    start: datetime | None = Field(default=None, description="default: now")
    end: datetime | None = Field(default=None, description="default: until lifted")


class ServerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pause_on_low_disk: bool | None = Field(
        default=None, description="no new builds while free disk is under the warning level")


class MaintenanceEntry(BaseModel):
    server_id: uuid.UUID
    name: str
    lifecycle: Lifecycle
    in_force: bool
    reason: str
    start: datetime | None
    end: datetime | None
    set_by: str
    cpu_cores: int
    build_slots: int


class MaintenanceOverview(BaseModel):
    windows: list[MaintenanceEntry]
    total_servers: int
    total_cores: int
    #: what maintenance takes away now, and what the upcoming windows will
    servers_in_maintenance: int
    cores_in_maintenance: int
    upcoming_servers: int
    upcoming_cores: int


class BuildTags(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] = Field(min_length=1)
    remove: bool = False


class BuildPin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pinned: bool = True


class BuildServerPage(BaseModel):
    items: list[BuildServerPublic]
    total: int
    page: int
    size: int


# ---- builds ---------------------------------------------------------------------------


class BuildCreate(BuildSpec):
    model_config = ConfigDict(extra="forbid")


class BuildAccepted(BaseModel):
    id: uuid.UUID
    status: BuildStatus = BuildStatus.QUEUED
    position: int | None
    estimated_start_s: float | None
    url: str


class ArtifactPublic(BaseModel):
    build_id: uuid.UUID
    name: str
    size: int
    sha256: str
    download_url: str


class BuildPublic(BaseModel):
    id: uuid.UUID
    spec: BuildSpec
    status: BuildStatus
    phase: BuildPhase | None
    server_id: uuid.UUID | None
    server_name: str | None
    commit: str | None
    attempt: int
    attempts: list[dict[str, object]]
    error: ErrorInfo | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: list[ArtifactPublic]
    log_url: str
    duration_s: float | None = None
    pinned: bool = False
    tags: list[str] = Field(default_factory=list)
    artifacts_expired_at: datetime | None = None
    #: where each artifact is stored (object store bucket / object name, or
    #: s3://bucket/key for the S3-compatible store)
    artifact_locations: list[str] = Field(default_factory=list)

    @classmethod
    def build(cls, view: BuildView) -> BuildPublic:
        return cls(id=view.build_id, spec=view.spec, status=view.status, phase=view.phase,
                   server_id=view.server_id, server_name=view.server_name, commit=view.commit,
                   attempt=view.attempt, attempts=view.attempts, error=view.error,
                   created_at=view.created_at, started_at=view.started_at,
                   finished_at=view.finished_at,
                   artifacts=[artifact_public(view.build_id, a.name, a.size, a.sha256)
                              for a in view.artifacts],
                   log_url=f"/api/v1/builds/{view.build_id}/log",
                   duration_s=build_duration(view), pinned=view.pinned, tags=view.tags,
                   artifacts_expired_at=view.artifacts_expired_at,
                   artifact_locations=[artifact_location(a) for a in view.artifacts])


def artifact_location(a: ArtifactInfo) -> str:
    return (f"s3://{a.bucket}/{a.object_name}" if a.backend == "s3"
            else f"{a.bucket}/{a.object_name}")


class BuildDetail(BuildPublic):
    #: the build server's CPU and memory while the build ran (from the monitor's samples)
    resource_usage: dict[str, object] | None = None
    resource_usage_error: ErrorInfo | None = None


def artifact_public(build_id: uuid.UUID, name: str, size: int, sha256: str) -> ArtifactPublic:
    return ArtifactPublic(build_id=build_id, name=name, size=size, sha256=sha256,
                          download_url=f"/api/v1/artifacts/{build_id}/{name}")


# ---- tokens ---------------------------------------------------------------------------


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(max_length=100, description="what the token is for")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenPublic(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="shown once; only its hash is stored")


# ---- system ---------------------------------------------------------------------------


class ServiceLiveness(BaseModel):
    status: str  # "up" | "down"
    instance: str | None = None
    version: str | None = None
    started_at: datetime | None = None
    latency_ms: float | None = None
    error: str | None = None


class HealthReport(BaseModel):
    status: str  # "ok" | "degraded"
    services: dict[str, ServiceLiveness]


BuildServerDetail.model_rebuild()
