"""Environment domain: QEMU test environments (owners: scheduler for placement, deployer for
the environment itself).

A developer asks for an environment (``env.cmd.create``, answered by the scheduler); the
scheduler reserves capacity on a QEMU host and publishes ``env.allocated`` (or
``request.queued`` with an estimate when nothing fits); the deployer deploys and boots it
and answers ``env.cmd.get|list|release|redeploy|rollback``.  ``env.released`` frees the
reservation.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .build import ArtifactInfo
from .envelope import Command, ErrorInfo, Event, Reply
from .fields import PlainString
from .resource import Arch

DEFAULT_BOOT_MARKER = "LABFLEET-BOOT-OK"


class EnvStatus(StrEnum):
    QUEUED = "queued"
    ALLOCATED = "allocated"
    DEPLOYING = "deploying"
    BOOTING = "booting"
    RUNNING = "running"
    FAILED = "failed"
    RELEASING = "releasing"
    RELEASED = "released"
    REJECTED = "rejected"


#: an environment in one of these holds no reservation any more
ENDED = frozenset({EnvStatus.RELEASED, EnvStatus.REJECTED})


class ArtifactSelector(BaseModel):
    """Which build's artifacts to deploy: exactly one of build id, commit, or branch (latest
    successful build of that branch for the environment's architecture)."""

    model_config = ConfigDict(extra="ignore")

    build_id: uuid.UUID | None = None
    commit: PlainString | None = None
    branch: PlainString | None = None
    #: narrows ``branch`` (the same branch name exists in many repositories)
    repo_url: PlainString | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ArtifactSelector:
        given = [n for n in ("build_id", "commit", "branch") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of build_id, commit or branch "
                             f"(got {', '.join(given) or 'none'})")
        return self

    def describe(self) -> str:
        if self.build_id:
            return f"build {self.build_id}"
        if self.commit:
            return f"commit {self.commit}"
        return f"latest successful build of branch {self.branch}"


class EnvSpec(BaseModel):
    """What a developer asks for."""

    model_config = ConfigDict(extra="ignore")

    arch: Arch
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=256, ge=32, le=262144)
    kvm: bool = False
    artifacts: ArtifactSelector
    #: a QEMU host's id or name; None means "Auto"
    host: PlainString | None = None
    boot_marker: PlainString = Field(default=DEFAULT_BOOT_MARKER, min_length=1, max_length=200)
    #: extra kernel command line; the console argument for the architecture is added
    cmdline: PlainString = Field(default="", max_length=2000)
    boot_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    #: how long the environment is expected to live; queued requests are estimated from it
    lease_s: float = Field(default=3600.0, gt=0)
    #: artifact names to use when the names do not tell (``bzImage`` / ``initrd`` ...)
    kernel_artifact: PlainString | None = None
    initrd_artifact: PlainString | None = None
    rootfs_artifact: PlainString | None = None
    name: PlainString = Field(default="", max_length=100)

    @field_validator("host")
    @classmethod
    def _auto_is_none(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "" or v.strip().lower() == "auto":
            return None
        return v.strip()

    @field_validator("boot_marker", "cmdline")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("must be a single line")
        return v


class ResolvedArtifacts(BaseModel):
    """The build chosen for an environment, as the builder described it."""

    model_config = ConfigDict(extra="ignore")

    build_id: uuid.UUID
    commit: str = ""
    artifacts: list[ArtifactInfo] = Field(default_factory=list)


class HostChoice(BaseModel):
    """A QEMU host as an environment form shows it (free capacity now)."""

    model_config = ConfigDict(extra="ignore")

    host_id: uuid.UUID
    name: str
    available: bool
    free_vcpus: int
    free_memory_mb: int
    utilization: float
    kvm: bool
    arches: list[Arch] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


# ---- events ---------------------------------------------------------------------------


class EnvRequested(Event):
    subject: ClassVar[str] = "env.requested"
    env_id: uuid.UUID
    spec: EnvSpec
    resolved: ResolvedArtifacts
    requested_by: str = ""


class EnvAllocated(Event):
    """Capacity on a host is reserved for the environment; the deployer takes it from here."""

    subject: ClassVar[str] = "env.allocated"
    env_id: uuid.UUID
    host_id: uuid.UUID
    host_name: str
    spec: EnvSpec
    resolved: ResolvedArtifacts
    requested_by: str = ""
    reason: str = ""


class EnvRejected(Event):
    """The scheduler will never place the environment (its host was removed ...)."""

    subject: ClassVar[str] = "env.rejected"
    env_id: uuid.UUID
    error: ErrorInfo


class EnvReleased(Event):
    """The environment ended; nothing of it runs on the host.  Frees the reservation."""

    subject: ClassVar[str] = "env.released"
    env_id: uuid.UUID
    host_id: uuid.UUID | None = None
    reason: str = ""


class EnvStatusChanged(Event):
    """The deployer's view of an environment changed (for live pages)."""

    subject: ClassVar[str] = "env.status"
    env_id: uuid.UUID
    status: EnvStatus
    detail: str = ""


class ConsoleChunk(BaseModel):
    """Published on ``log.console.<env_id>`` (stream LOGS); ``seq`` orders chunks per
    environment across its deployments."""

    model_config = ConfigDict(extra="ignore")

    env_id: uuid.UUID
    deployment: int
    seq: int
    at: datetime
    text: str
    eof: bool = False


def console_subject(env_id: uuid.UUID) -> str:
    return f"log.console.{env_id}"


# ---- commands -------------------------------------------------------------------------


class CreateEnv(Command):
    subject: ClassVar[str] = "env.cmd.create"
    spec: EnvSpec
    requested_by: str = ""


class CreateEnvReply(Reply):
    env_id: uuid.UUID | None = None
    status: EnvStatus | None = None
    host_name: str | None = None
    position: int | None = None
    estimated_wait_s: float | None = None
    #: hosts that would fit, when the chosen one cannot
    alternatives: list[str] = Field(default_factory=list)
    warning: str | None = None


class ListEnvHosts(Command):
    """QEMU hosts with their free capacity (the create form's dropdown); scheduler."""

    subject: ClassVar[str] = "env.cmd.hosts"


class EnvHostsReply(Reply):
    hosts: list[HostChoice] = Field(default_factory=list)


class DeploymentView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    number: int
    build_id: uuid.UUID
    commit: str = ""
    status: str
    #: for a failed boot: panic | oops | timeout | reset_loop | deploy_error
    failure: str | None = None
    error: ErrorInfo | None = None
    started_at: datetime
    finished_at: datetime | None = None
    transferred_bytes: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    #: times the deployer took this deployment up (more than 1: it died meanwhile)
    attempts: int = 0


class EnvView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    env_id: uuid.UUID
    spec: EnvSpec
    status: EnvStatus
    requested_by: str = ""
    host_id: uuid.UUID | None = None
    host_name: str | None = None
    vm_name: str | None = None
    build_id: uuid.UUID | None = None
    commit: str | None = None
    deployed_at: datetime | None = None
    created_at: datetime
    released_at: datetime | None = None
    error: ErrorInfo | None = None
    #: how to reach the serial console (``virsh -c <uri> console <vm>``)
    console: str | None = None
    libvirt_uri: str | None = None
    deployments: list[DeploymentView] = Field(default_factory=list)
    position: int | None = None
    estimated_wait_s: float | None = None


class GetEnv(Command):
    subject: ClassVar[str] = "env.cmd.get"
    env_id: uuid.UUID


class EnvReply(Reply):
    env: EnvView | None = None


class ListEnvs(Command):
    subject: ClassVar[str] = "env.cmd.list"
    limit: int = Field(default=200, ge=1, le=5000)
    include_released: bool = True


class EnvListReply(Reply):
    envs: list[EnvView] = Field(default_factory=list)


class ReleaseEnv(Command):
    subject: ClassVar[str] = "env.cmd.release"
    env_id: uuid.UUID
    requested_by: str = ""


class RedeployEnv(Command):
    """Deploy again on the same host: the current artifacts (retry after a failed boot) or,
    with ``artifacts``, another build (which a rollback can undo)."""

    subject: ClassVar[str] = "env.cmd.redeploy"
    env_id: uuid.UUID
    artifacts: ArtifactSelector | None = None
    requested_by: str = ""


class DeployReply(Reply):
    """Answer to redeploy/rollback/release: the deployment started (or release begun)."""

    env_id: uuid.UUID | None = None
    deployment: int | None = None
    build_id: uuid.UUID | None = None


class RollbackEnv(Command):
    """Deploy the artifacts of the environment's previous deployment."""

    subject: ClassVar[str] = "env.cmd.rollback"
    env_id: uuid.UUID
    requested_by: str = ""


# ---- which artifact is which ----------------------------------------------------------

#: artifact names (lower case, glob patterns) taken for each role when the spec names none
KERNEL_NAMES = ("bzimage", "image", "image.gz", "zimage", "vmlinuz*", "kernel", "vmlinux",
                "*.kernel")
INITRD_NAMES = ("initrd*", "initramfs*", "*.cpio", "*.cpio.gz", "*.cpio.xz", "*.cpio.zst")
ROOTFS_NAMES = ("rootfs*", "*.ext4", "*.ext2", "*.qcow2", "*.img")


class BootArtifacts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kernel: ArtifactInfo
    initrd: ArtifactInfo | None = None
    rootfs: ArtifactInfo | None = None

    def all(self) -> list[ArtifactInfo]:
        return [a for a in (self.kernel, self.initrd, self.rootfs) if a is not None]


class ArtifactChoiceError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def pick_boot_artifacts(spec: EnvSpec, artifacts: list[ArtifactInfo]) -> BootArtifacts:
    """The kernel, initrd and rootfs among a build's artifacts, by the names the spec gives
    or by the usual names; raises :class:`ArtifactChoiceError` saying what is missing."""
    import fnmatch

    by_name = {a.name: a for a in artifacts}
    base = {a.name.rsplit("/", 1)[-1].lower(): a for a in artifacts}

    def pick(explicit: str | None, patterns: tuple[str, ...], role: str,
             taken: set[str]) -> ArtifactInfo | None:
        if explicit:
            found = by_name.get(explicit) or base.get(explicit.lower())
            if found is None:
                raise ArtifactChoiceError(
                    f"the build has no artifact named {explicit!r} for the {role} "
                    f"(it has: {', '.join(sorted(by_name)) or 'none'})", f"{role}_artifact")
            return found
        for pattern in patterns:
            for name in sorted(base):
                if fnmatch.fnmatchcase(name, pattern) and base[name].name not in taken:
                    return base[name]
        return None

    taken: set[str] = set()
    kernel = pick(spec.kernel_artifact, KERNEL_NAMES, "kernel", taken)
    if kernel is None:
        raise ArtifactChoiceError(
            "the build has no kernel image among its artifacts (looked for "
            f"{', '.join(KERNEL_NAMES)}; it has: {', '.join(sorted(by_name)) or 'none'})",
            "kernel_artifact")
    taken.add(kernel.name)
    initrd = pick(spec.initrd_artifact, INITRD_NAMES, "initrd", taken)
    if initrd is not None:
        taken.add(initrd.name)
    rootfs = pick(spec.rootfs_artifact, ROOTFS_NAMES, "rootfs", taken)
    return BootArtifacts(kernel=kernel, initrd=initrd, rootfs=rootfs)
