"""Build domain: jobs on build servers and their artifacts (owners: builder, scheduler)."""
from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from .envelope import Command, ErrorInfo, Event, Reply
from .fields import Name, PlainString, plain_string
from .resource import Arch


class BuildStatus(StrEnum):
    QUEUED = "queued"
    ALLOCATED = "allocated"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BuildPhase(StrEnum):
    FETCH = "fetch"
    CONFIGURE = "configure"
    COMPILE = "compile"
    COLLECT = "collect"
    UPLOAD = "upload"


class BuildKind(StrEnum):
    """``make``: a plain make of whatever the tree builds (artifacts as listed);
    ``kernel``: a Linux kernel, whose image, dtbs, modules and config are collected by default."""

    MAKE = "make"
    KERNEL = "kernel"


class BuildBackend(StrEnum):
    """Who drives a kernel build on the server: labfleet's own make steps, TuxMake, or
    TuxMake where the server has it installed (``auto``)."""

    MAKE = "make"
    TUXMAKE = "tuxmake"
    AUTO = "auto"


def _tag(value: str) -> str:
    tag = plain_string(value)
    if not tag or len(tag) > 100 or any(c.isspace() or c == "," for c in tag):
        raise ValueError(f"tag {tag!r} must be 1-100 characters without white space or commas")
    return tag


#: a build's tag (``release``, ``v6.1-rc2``): kept by retention, matched exactly
Tag = Annotated[str, AfterValidator(_tag)]

#: one kconfig line: ``CONFIG_FOO=y``, ``CONFIG_BAR="text"`` or ``# CONFIG_BAZ is not set``
_KCONFIG_LINE = re.compile(r'^(CONFIG_[A-Za-z0-9_]+=("[^"\n]*"|[A-Za-z0-9_x+-]+)'
                           r'|# CONFIG_[A-Za-z0-9_]+ is not set)$')


class BuildSpec(BaseModel):
    """What a developer asks to build."""

    model_config = ConfigDict(extra="ignore")

    repo_url: PlainString = Field(min_length=1)
    ref: Name = Field(default="HEAD", description="branch, tag or commit")
    arch: Arch
    #: a kconfig target (``tinyconfig``, ``defconfig``) or, for non-kernel repos, "" (plain make)
    config: PlainString = ""
    config_fragments: list[PlainString] = Field(default_factory=list)
    #: make targets to run; empty means the default target
    make_targets: list[PlainString] = Field(default_factory=list)
    #: paths (relative to the tree, globs allowed) collected as artifacts
    artifacts: list[PlainString] = Field(default_factory=list)
    #: a build server's id or name; None means "Auto"
    server: PlainString | None = None
    #: only servers carrying all these labels may build it (e.g. ``{"team": "bsp"}``)
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    #: None: ``kernel`` when a config target is given, else ``make``
    kind: BuildKind | None = None
    #: kconfig lines merged after the config target and the fragment files (a fragment
    #: given inline, e.g. ``["CONFIG_PRINTK=y"]``); kernel builds only
    config_options: list[str] = Field(default_factory=list)
    backend: BuildBackend = BuildBackend.MAKE

    @property
    def build_kind(self) -> BuildKind:
        return self.kind or (BuildKind.KERNEL if self.config else BuildKind.MAKE)

    @field_validator("config_options")
    @classmethod
    def _kconfig_lines(cls, v: list[str]) -> list[str]:
        out = [line.strip() for line in v]
        for line in out:
            if not _KCONFIG_LINE.match(line):
                raise ValueError(f"{line!r} is no kconfig line (write CONFIG_NAME=y, "
                                 "CONFIG_NAME=\"text\" or # CONFIG_NAME is not set)")
        return [plain_string(line) for line in out]  # no NUL inside a quoted value

    # These strings end up as arguments of git and make on a build server: a leading "-"
    # would be read as an option, and artifact paths must stay inside the source tree.
    @field_validator("repo_url", "ref", "config")
    @classmethod
    def _not_an_option(cls, v: str) -> str:
        v = v.strip()
        if v.startswith("-"):
            raise ValueError("must not start with '-'")
        return v

    @field_validator("make_targets")
    @classmethod
    def _targets_not_options(cls, v: list[str]) -> list[str]:
        for target in v:
            if not target or target.startswith("-") or any(c.isspace() for c in target):
                raise ValueError(f"make target {target!r} must be a plain name (no '-' prefix, "
                                 "no white space)")
        return v

    @field_validator("artifacts", "config_fragments")
    @classmethod
    def _inside_the_tree(cls, v: list[str]) -> list[str]:
        for path in v:
            parts = path.split("/")
            if not path or path.startswith("/") or ".." in parts or path.startswith("-"):
                raise ValueError(f"{path!r} must be a path relative to the source tree "
                                 "(no leading '/', no '..')")
        return v


class BuildRequested(Event):
    subject: ClassVar[str] = "build.requested"
    build_id: uuid.UUID
    spec: BuildSpec
    requested_by: str = ""


class BuildAllocated(Event):
    subject: ClassVar[str] = "build.allocated"
    build_id: uuid.UUID
    server_id: uuid.UUID
    server_name: str
    spec: BuildSpec
    attempt: int = 1
    reason: str = ""


class BuildRejected(Event):
    """The scheduler could not place the build at all (no server can ever build it)."""

    subject: ClassVar[str] = "build.rejected"
    build_id: uuid.UUID
    error: ErrorInfo


class BuildStarted(Event):
    subject: ClassVar[str] = "build.started"
    build_id: uuid.UUID
    server_id: uuid.UUID
    attempt: int = 1


class BuildProgress(Event):
    subject: ClassVar[str] = "build.progress"
    build_id: uuid.UUID
    phase: BuildPhase
    percent: float | None = None


class ArtifactInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    size: int
    sha256: str
    object_name: str
    bucket: str
    #: which store holds it: "jetstream" (the object store bucket ``bucket``) or "s3"
    #: (the S3-compatible store's bucket ``bucket``); events from before S3 say nothing
    backend: str = "jetstream"
    #: where and how it was built (build id, repository, ref, commit, arch, config,
    #: toolchain, server); also kept as the object's headers in the store
    metadata: dict[str, str] = Field(default_factory=dict)


class BuildSucceeded(Event):
    subject: ClassVar[str] = "build.succeeded"
    build_id: uuid.UUID
    server_id: uuid.UUID
    commit: str
    duration_s: float
    artifacts: list[ArtifactInfo]
    attempt: int = 1
    #: the compiler that built it, as ``gcc --version`` names itself
    toolchain: str = ""


class BuildFailed(Event):
    subject: ClassVar[str] = "build.failed"
    build_id: uuid.UUID
    server_id: uuid.UUID | None = None
    error: ErrorInfo
    attempt: int = 1
    #: True when the scheduler should place another attempt (server lost, not a compile error)
    retryable: bool = False


class BuildCancelled(Event):
    subject: ClassVar[str] = "build.cancelled"
    build_id: uuid.UUID
    reason: str = ""


class BuildFinished(Event):
    """Emitted by the builder after any terminal state; the scheduler frees the slot."""

    subject: ClassVar[str] = "build.finished"
    build_id: uuid.UUID
    server_id: uuid.UUID | None = None
    status: BuildStatus


class ArtifactStored(Event):
    subject: ClassVar[str] = "artifact.stored"
    build_id: uuid.UUID
    artifact: ArtifactInfo
    commit: str = ""
    arch: Arch | None = None
    ref: str = ""


class LogChunk(BaseModel):
    """Published on ``log.build.<build_id>`` (stream LOGS); ``seq`` orders chunks per build."""

    model_config = ConfigDict(extra="ignore")

    build_id: uuid.UUID
    seq: int
    at: datetime
    text: str
    attempt: int = 1
    #: the last chunk of the build's log (after success, failure or cancel)
    eof: bool = False


def log_subject(build_id: uuid.UUID) -> str:
    return f"log.build.{build_id}"


# ---- commands ------------------------------------------------------------------------


class SubmitBuild(Command):
    subject: ClassVar[str] = "build.cmd.submit"
    spec: BuildSpec
    requested_by: str = ""


class SubmitBuildReply(Reply):
    build_id: uuid.UUID | None = None
    position: int | None = None
    estimated_start_s: float | None = None
    #: servers that would do, when the chosen one cannot
    alternatives: list[str] = Field(default_factory=list)


class GetBuild(Command):
    subject: ClassVar[str] = "build.cmd.get"
    build_id: uuid.UUID


class BuildView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    build_id: uuid.UUID
    spec: BuildSpec
    status: BuildStatus
    phase: BuildPhase | None = None
    server_id: uuid.UUID | None = None
    server_name: str | None = None
    commit: str | None = None
    attempt: int = 1
    attempts: list[dict[str, object]] = Field(default_factory=list)
    error: ErrorInfo | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    #: while queued: place in the queue (1 = next) and the expected wait
    position: int | None = None
    estimated_start_s: float | None = None
    #: kept by retention: a pinned or tagged build's artifacts are never deleted
    pinned: bool = False
    tags: list[str] = Field(default_factory=list)
    #: when retention deleted the artifacts (the build's record stays)
    artifacts_expired_at: datetime | None = None


class BuildReply(Reply):
    build: BuildView | None = None


class ListBuilds(Command):
    subject: ClassVar[str] = "build.cmd.list"
    limit: int = 100
    #: only builds whose current attempt is (or was last) on this server
    server_id: uuid.UUID | None = None
    #: only builds not finished yet (queued, allocated, running)
    active_only: bool = False


class BuildListReply(Reply):
    builds: list[BuildView] = Field(default_factory=list)


class CancelBuild(Command):
    subject: ClassVar[str] = "build.cmd.cancel"
    build_id: uuid.UUID
    reason: str = ""


class PinBuild(Command):
    """Keep (or stop keeping) a build's artifacts past the retention period; BuildReply."""

    subject: ClassVar[str] = "build.cmd.pin"
    build_id: uuid.UUID
    pinned: bool = True
    requested_by: str = ""


class TagBuild(Command):
    """Add (or with ``remove``, take away) tags; a tagged build is kept by retention."""

    subject: ClassVar[str] = "build.cmd.tag"
    build_id: uuid.UUID
    tags: list[Tag] = Field(min_length=1)
    remove: bool = False
    requested_by: str = ""


class ArtifactsExpired(Event):
    """Retention deleted a build's artifacts (objects and metadata)."""

    subject: ClassVar[str] = "artifact.expired"
    build_id: uuid.UUID
    names: list[str] = Field(default_factory=list)
    bytes_freed: int = 0


class ListArtifacts(Command):
    subject: ClassVar[str] = "artifact.cmd.list"
    build_id: uuid.UUID | None = None
    commit: str | None = None
    ref: str | None = None
    arch: Arch | None = None
    latest: bool = False
    #: narrows ``ref`` (the same branch name exists in many repositories)
    repo_url: str | None = None


class ArtifactListReply(Reply):
    build_id: uuid.UUID | None = None
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
