"""Deployment domain: artifacts to a QEMU host, the VM, its boot (owner: deployer).

Console output of an environment travels as :class:`labfleet.shared.events.env.ConsoleChunk`
on ``log.console.<env_id>``.
"""
from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from .envelope import ErrorInfo, Event
from .env import ResolvedArtifacts


class BootFailure(StrEnum):
    PANIC = "panic"
    OOPS = "oops"
    TIMEOUT = "timeout"
    RESET_LOOP = "reset_loop"
    #: the VM shut down (or was destroyed) before the boot was proven
    STOPPED = "stopped"
    #: the VM never started (transfer, checksum, libvirt)
    DEPLOY_ERROR = "deploy_error"


class DeployRequested(Event):
    """A new deployment of an existing environment (redeploy or rollback)."""

    subject: ClassVar[str] = "deploy.requested"
    env_id: uuid.UUID
    deployment: int
    resolved: ResolvedArtifacts
    requested_by: str = ""


class DeployStarted(Event):
    subject: ClassVar[str] = "deploy.started"
    env_id: uuid.UUID
    deployment: int
    host_id: uuid.UUID
    build_id: uuid.UUID


class ArtifactsTransferred(Event):
    subject: ClassVar[str] = "deploy.transferred"
    env_id: uuid.UUID
    deployment: int
    host_id: uuid.UUID
    #: bytes sent over SFTP (0 when every artifact was in the host's cache)
    bytes_sent: int
    cached: list[str] = []
    sent: list[str] = []
    duration_s: float = 0.0


class VmStarted(Event):
    subject: ClassVar[str] = "deploy.vm_started"
    env_id: uuid.UUID
    deployment: int
    host_id: uuid.UUID
    vm_name: str


class BootVerified(Event):
    subject: ClassVar[str] = "deploy.boot_verified"
    env_id: uuid.UUID
    deployment: int
    host_id: uuid.UUID
    vm_name: str
    build_id: uuid.UUID
    commit: str = ""
    #: the console line that proved the boot
    matched: str = ""
    boot_s: float = 0.0
    timings: dict[str, float] = {}


class BootFailed(Event):
    subject: ClassVar[str] = "deploy.boot_failed"
    env_id: uuid.UUID
    deployment: int
    host_id: uuid.UUID | None = None
    kind: BootFailure
    error: ErrorInfo
    #: the console lines around the failure
    log_excerpt: str = ""
