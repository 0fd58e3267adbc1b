"""Resource domain: build servers, QEMU hosts, boards and flash stations (owner: inventory)."""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .envelope import Command, Event, Reply
from .fields import Address, Fingerprint, Hostname, Name, PlainString, Text


class ResourceKind(StrEnum):
    BUILD_SERVER = "build_server"
    QEMU_HOST = "qemu_host"
    BOARD = "board"
    FLASH_STATION = "flash_station"


class Arch(StrEnum):
    X86_64 = "x86_64"
    ARM = "arm"
    ARM64 = "arm64"
    RISCV64 = "riscv64"


#: the cross compiler prefix a build for each architecture needs ("" = native gcc)
TOOLCHAIN_PREFIX: dict[Arch, str] = {
    Arch.X86_64: "",
    Arch.ARM: "arm-linux-gnueabihf-",
    Arch.ARM64: "aarch64-linux-gnu-",
    Arch.RISCV64: "riscv64-linux-gnu-",
}


class Lifecycle(StrEnum):
    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    RETIRED = "retired"


class Toolchain(BaseModel):
    model_config = ConfigDict(extra="ignore")

    arch: Arch
    prefix: str
    compiler: str
    version: str


class BuildServerCapabilities(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cpu_cores: int
    cpu_model: str = ""
    machine: str = ""
    memory_mb: int
    disk_total_gb: float
    disk_free_gb: float
    work_dir: str = ""
    toolchains: list[Toolchain] = Field(default_factory=list)
    tools: dict[str, str] = Field(default_factory=dict)


class KvmSupport(BaseModel):
    """Whether a guest can run under KVM on the host, found by trying, not by ``/dev/kvm``."""

    model_config = ConfigDict(extra="ignore")

    usable: bool
    reason: str = ""


class GuestEmulator(BaseModel):
    model_config = ConfigDict(extra="ignore")

    arch: Arch
    emulator: str  # e.g. /usr/bin/qemu-system-aarch64
    version: str = ""


class QemuHostCapabilities(BaseModel):
    """What a QEMU host offers, detected at registration (SSH + libvirt)."""

    model_config = ConfigDict(extra="ignore")

    cpu_arch: str  # uname -m of the host
    cpu_cores: int
    memory_mb: int
    storage_total_gb: float
    storage_free_gb: float
    image_dir: str  # where deployed kernels/initrds/rootfs are cached on the host
    kvm: KvmSupport
    guests: list[GuestEmulator] = Field(default_factory=list)
    libvirt_uri: str  # qemu+ssh://user@host:port/system (with the pinned host key)
    libvirt_version: str = ""
    #: what the admin allows VMs to take (defaults: all cores, memory less 1 GiB)
    allocatable_vcpus: int | None = None
    allocatable_memory_mb: int | None = None


class SshTarget(BaseModel):
    """How to reach a host; never carries the secret itself."""

    model_config = ConfigDict(extra="ignore")

    address: str
    port: int = 22
    username: str
    host_key: str | None = None  # OpenSSH public key line, pinned at registration
    host_key_fingerprint: str | None = None


class MaintenanceWindow(BaseModel):
    """A maintenance period set by an admin; ``start`` None = now, ``end`` None = until lifted."""

    model_config = ConfigDict(extra="ignore")

    reason: str = ""
    start: datetime | None = None
    end: datetime | None = None
    set_by: str = ""
    set_at: datetime | None = None


class ResourceView(BaseModel):
    """What other services may know about a resource (no credentials)."""

    model_config = ConfigDict(extra="ignore")

    resource_id: uuid.UUID
    kind: ResourceKind
    name: str
    ssh: SshTarget
    architectures: list[Arch] = Field(default_factory=list)
    build_configs: list[str] = Field(default_factory=list)
    capabilities: BuildServerCapabilities | None = None
    #: set for QEMU hosts (kind ``qemu_host``)
    qemu: QemuHostCapabilities | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    registered_at: datetime | None = None
    #: the current or next maintenance window (lifecycle says whether it is in force)
    maintenance: MaintenanceWindow | None = None
    #: the admin asked that no new builds go here while its disk is under the warning level
    pause_on_low_disk: bool = False


# ---- events -------------------------------------------------------------------------


class ResourceRegistered(Event):
    subject: ClassVar[str] = "resource.registered"
    resource: ResourceView


class ResourceUpdated(Event):
    subject: ClassVar[str] = "resource.updated"
    resource: ResourceView


class ResourceRemoved(Event):
    subject: ClassVar[str] = "resource.removed"
    resource_id: uuid.UUID
    kind: ResourceKind


# ---- commands (request/reply; a human waits) ---------------------------------------


class RegisterBuildServer(Command):
    subject: ClassVar[str] = "resource.cmd.register_build_server"

    hostname: Hostname
    address: Address
    ssh_port: int = Field(default=22, ge=1, le=65535)
    username: Name
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    architectures: list[Arch] = Field(default_factory=list)
    build_configs: list[Name] = Field(default_factory=list)
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    #: the fingerprint the admin accepted; when given, a different key is refused
    expected_host_key_fingerprint: Fingerprint | None = None
    #: where builds run and whose free disk counts; None = the user's home directory
    work_dir: PlainString | None = None
    #: who asked, for the audit record
    requested_by: str = ""


class RegisterQemuHost(Command):
    """Register a QEMU host: validated over SSH and over libvirt with the pinned host key.

    Answered with :class:`RegistrationReply` (``resource.qemu`` holds what was detected).
    """

    subject: ClassVar[str] = "resource.cmd.register_qemu_host"

    hostname: Hostname
    address: Address
    ssh_port: int = Field(default=22, ge=1, le=65535)
    username: Name
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    labels: dict[Name, PlainString] = Field(default_factory=dict)
    #: the fingerprint the admin accepted; when given, a different key is refused
    expected_host_key_fingerprint: Fingerprint | None = None
    #: guest architectures the host must emulate (refused when one lacks its QEMU);
    #: empty = whatever the host turns out to have
    guest_architectures: list[Arch] = Field(default_factory=list)
    #: what VMs may take; None = all cores / memory less 1 GiB
    allocatable_vcpus: int | None = Field(default=None, ge=1)
    allocatable_memory_mb: int | None = Field(default=None, ge=64)
    #: where deployed kernels and images are cached; None = ``~/labfleet-images``
    image_dir: PlainString | None = None
    #: who asked, for the audit record
    requested_by: str = ""


class RegistrationReply(Reply):
    resource: ResourceView | None = None


class GetResource(Command):
    subject: ClassVar[str] = "resource.cmd.get"
    resource_id: uuid.UUID


class ListResources(Command):
    subject: ClassVar[str] = "resource.cmd.list"
    kind: ResourceKind | None = None


class ResourceReply(Reply):
    resource: ResourceView | None = None


class ResourceListReply(Reply):
    resources: list[ResourceView] = Field(default_factory=list)


class RemoveResource(Command):
    """Take a resource out of the pool; answered with :class:`ResourceReply` (the removed one)."""

    subject: ClassVar[str] = "resource.cmd.remove"
    resource_id: uuid.UUID
    #: who asked, for the audit record
    requested_by: str = ""


class SetMaintenance(Command):
    """Put a resource in maintenance (now, or for a window) or take it out; ResourceReply."""

    subject: ClassVar[str] = "resource.cmd.set_maintenance"
    resource_id: uuid.UUID
    on: bool
    reason: Text = ""
    start: datetime | None = None
    end: datetime | None = None
    requested_by: str = ""


class Decommission(Command):
    """Retire a resource for good; refused while it has active work unless ``force``."""

    subject: ClassVar[str] = "resource.cmd.decommission"
    resource_id: uuid.UUID
    force: bool = False
    requested_by: str = ""


class SetResourceOptions(Command):
    """Per-resource admin settings (today: pause new builds while disk is low); ResourceReply."""

    subject: ClassVar[str] = "resource.cmd.set_options"
    resource_id: uuid.UUID
    pause_on_low_disk: bool | None = None
    requested_by: str = ""


class CheckHostKey(Command):
    """Which host key the resource presents now against the pinned one; HostKeyReply."""

    subject: ClassVar[str] = "resource.cmd.check_host_key"
    resource_id: uuid.UUID


class AcceptHostKey(Command):
    """Pin the key the host presents now, if its fingerprint is ``fingerprint`` (what the
    admin saw and accepts); audit-logged with both fingerprints.  HostKeyReply."""

    subject: ClassVar[str] = "resource.cmd.accept_host_key"
    resource_id: uuid.UUID
    #: checked by the inventory (a malformed one is refused as ``invalid_fingerprint``)
    fingerprint: str
    requested_by: str = ""


class HostKeyReply(Reply):
    resource: ResourceView | None = None
    #: the fingerprint pinned (before an accept: the old one)
    pinned_fingerprint: str | None = None
    #: the fingerprint of the key the host presents now
    presented_fingerprint: str | None = None
    matches: bool | None = None
    #: set by an accept: the presented key is the pinned one now
    accepted: bool = False
    #: set by an accept: the fingerprint pinned before
    previous_fingerprint: str | None = None


class GetCredentials(Command):
    """Asked by services that must log in to a host (monitor, builder, deployer).

    Answered only on the internal bus; the reply is never logged or persisted.
    """

    subject: ClassVar[str] = "resource.cmd.credentials"
    resource_id: uuid.UUID


class CredentialsReply(Reply):
    resource: ResourceView | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None
