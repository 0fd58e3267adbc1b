"""A build server as the scheduler sees it: capabilities, availability and load."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import TOOLCHAIN_PREFIX, Arch, Lifecycle

#: health states in which a server takes new builds (degraded = reachable, with warnings)
USABLE_HEALTH = frozenset({HealthStatus.ONLINE, HealthStatus.DEGRADED})


@dataclass(frozen=True)
class LoadSample:
    at: datetime
    cpu_pct: float
    load1: float
    disk_free_gb: float


@dataclass(frozen=True)
class BuildServerState:
    server_id: uuid.UUID
    name: str
    #: architectures the server has a working toolchain for (detected at registration)
    toolchains: frozenset[Arch]
    #: architectures the admin declared; empty means "whatever the toolchains allow"
    declared: frozenset[Arch] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    health: HealthStatus = HealthStatus.UNKNOWN
    cpu_cores: int = 1
    #: builds that may run at once; one by default so a build gets the whole machine
    slots: int = 1
    #: builds allocated to it and not finished
    running: int = 0
    sample: LoadSample | None = None
    #: free disk known from registration, used until a sample arrives
    registered_disk_free_gb: float | None = None
    #: the admin asked for no new builds while the disk is under the warning level
    pause_on_low_disk: bool = False

    def supports(self, arch: Arch) -> bool:
        return arch in self.toolchains and (not self.declared or arch in self.declared)

    def matches(self, ref: str) -> bool:
        """Whether ``ref`` (a ``spec.server`` value) names this server by id or name."""
        return ref == self.name or ref == str(self.server_id)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.running)

    def disk_free_gb(self) -> float | None:
        if self.sample is not None:
            return self.sample.disk_free_gb
        return self.registered_disk_free_gb


def toolchain_name(arch: Arch) -> str:
    return f"{TOOLCHAIN_PREFIX[arch]}gcc"


def capability_problems(spec: BuildSpec, server: BuildServerState) -> list[str]:
    """Why the server can never build ``spec`` (empty: it can)."""
    problems: list[str] = []
    if spec.arch not in server.toolchains:
        have = ", ".join(sorted(server.toolchains)) or "none"
        problems.append(f"no {spec.arch} toolchain ({toolchain_name(spec.arch)}); "
                        f"it builds for: {have}")
    elif server.declared and spec.arch not in server.declared:
        problems.append(f"{spec.arch} is not among its declared architectures "
                        f"({', '.join(sorted(server.declared))})")
    missing = {k: v for k, v in spec.labels.items() if server.labels.get(k) != v}
    if missing:
        problems.append("lacks labels " + ", ".join(f"{k}={v}" for k, v in sorted(missing.items())))
    return problems


def availability_problems(server: BuildServerState, min_free_disk_gb: float,
                          disk_warning_gb: float | None = None) -> list[str]:
    """Why the server cannot take a build now (empty: it can).

    Under ``min_free_disk_gb`` no server takes a build; under ``disk_warning_gb`` only those
    whose admin chose to pause them on low disk refuse.
    """
    problems: list[str] = []
    if server.lifecycle != Lifecycle.ACTIVE:
        problems.append(f"in {server.lifecycle}")
    if server.health not in USABLE_HEALTH:
        problems.append(f"{server.health}" if server.health != HealthStatus.UNKNOWN
                        else "health unknown (not seen online yet)")
    disk = server.disk_free_gb()
    if disk is not None and disk < min_free_disk_gb:
        problems.append(f"disk low: {disk:.1f} GB free, {min_free_disk_gb:g} GB needed")
    elif (disk is not None and server.pause_on_low_disk and disk_warning_gb is not None
          and disk < disk_warning_gb):
        problems.append(f"paused on low disk: {disk:.1f} GB free, under the "
                        f"{disk_warning_gb:g} GB warning level")
    return problems
