"""QEMU host selection: which host should run an environment, and why.

:func:`select_qemu_host` is a pure function of the request and the hosts.  A host is
*capable* when it can ever run the guest (an emulator for the architecture, usable KVM if
asked for, enough allocatable vCPUs and memory in total), *available* when it may take new
VMs now (active, online, no resource over the utilization limit) and *fits* when its free
capacity (allocatable less reservations) holds the request.  Among hosts that are all
three, the one with the lowest utilization after placing wins; ties break on the name,
then the id, so the order the hosts are listed in never matters.  Every host is reported
with its reasons: that list is the decision log and the form's alternatives.
"""
from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from labfleet.shared.events.env import EnvSpec
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import Arch, Lifecycle

#: ``uname -m`` of a host whose KVM can run a guest of the architecture
KVM_HOST_MACHINE: dict[Arch, frozenset[str]] = {
    Arch.X86_64: frozenset({"x86_64", "amd64"}),
    Arch.ARM64: frozenset({"aarch64", "arm64"}),
    Arch.ARM: frozenset({"armv7l", "aarch64"}),
    Arch.RISCV64: frozenset({"riscv64"}),
}


class EnvOutcome(StrEnum):
    PLACED = "placed"
    #: capable hosts exist, but none has the capacity (or may take VMs) right now
    WAIT_FOR_CAPACITY = "wait_for_capacity"
    NO_CAPABLE_HOST = "no_capable_host"
    UNKNOWN_HOST = "unknown_host"


@dataclass(frozen=True)
class EnvPolicy:
    #: a host with CPU, memory or storage use above this takes no new VM
    max_utilization_pct: float = 85.0


@dataclass(frozen=True)
class QemuHostState:
    host_id: uuid.UUID
    name: str
    lifecycle: Lifecycle
    health: HealthStatus
    cpu_arch: str
    guests: frozenset[Arch]
    kvm_usable: bool
    #: what VMs may take in total
    vcpus: int
    memory_mb: int
    #: what reservations of live environments hold
    reserved_vcpus: int = 0
    reserved_memory_mb: int = 0
    #: the monitor's latest figures, None when unknown
    cpu_pct: float | None = None
    mem_pct: float | None = None
    disk_pct: float | None = None
    health_reason: str = ""

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.reserved_vcpus

    @property
    def free_memory_mb(self) -> int:
        return self.memory_mb - self.reserved_memory_mb

    def reserve(self, vcpus: int, memory_mb: int) -> QemuHostState:
        from dataclasses import replace

        return replace(self, reserved_vcpus=self.reserved_vcpus + vcpus,
                       reserved_memory_mb=self.reserved_memory_mb + memory_mb)


@dataclass(frozen=True)
class HostCandidate:
    host_id: uuid.UUID
    name: str
    capable: bool
    available: bool
    fits: bool
    utilization: float
    reasons: tuple[str, ...]

    @property
    def eligible(self) -> bool:
        return self.capable and self.available and self.fits

    def as_dict(self) -> dict[str, object]:
        return {"host_id": str(self.host_id), "name": self.name, "capable": self.capable,
                "available": self.available, "fits": self.fits,
                "utilization": round(self.utilization, 3), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class EnvDecision:
    outcome: EnvOutcome
    chosen: QemuHostState | None
    #: eligible hosts in rank order, then the others by name
    candidates: tuple[HostCandidate, ...]
    reason: str
    #: for a request naming a host that cannot take it: hosts that would fit instead
    alternatives: tuple[str, ...] = field(default=())
    #: for a named host: what is wrong with it
    pinned_problems: tuple[str, ...] = field(default=())


def capability_problems(spec: EnvSpec, host: QemuHostState) -> list[str]:
    problems = []
    if spec.arch not in host.guests:
        problems.append(f"no QEMU emulator for {spec.arch}")
    if spec.kvm:
        if not host.kvm_usable:
            problems.append("KVM not usable")
        elif host.cpu_arch not in KVM_HOST_MACHINE.get(spec.arch, frozenset()):
            problems.append(f"KVM runs {host.cpu_arch} guests, not {spec.arch}")
    if spec.vcpus > host.vcpus:
        problems.append(f"{spec.vcpus} vCPUs requested, at most {host.vcpus} allocatable")
    if spec.memory_mb > host.memory_mb:
        problems.append(f"{spec.memory_mb} MiB requested, at most {host.memory_mb} allocatable")
    return problems


def availability_problems(host: QemuHostState, policy: EnvPolicy) -> list[str]:
    problems = []
    if host.lifecycle != Lifecycle.ACTIVE:
        problems.append(f"in {host.lifecycle}")
    if host.health != HealthStatus.ONLINE:
        why = {HealthStatus.UNKNOWN: "health unknown (not seen online yet)"}.get(
            host.health, str(host.health))
        problems.append(f"{why}: {host.health_reason}" if host.health_reason else why)
    limit = policy.max_utilization_pct
    for label, value in (("CPU", host.cpu_pct), ("memory", host.mem_pct),
                         ("storage", host.disk_pct)):
        if value is not None and value > limit:
            problems.append(f"{label} at {value:.0f} % (over {limit:.0f} %)")
    return problems


def fit_problems(spec: EnvSpec, host: QemuHostState) -> list[str]:
    problems = []
    if spec.vcpus > host.free_vcpus:
        problems.append(f"{host.free_vcpus} of {host.vcpus} vCPUs free")
    if spec.memory_mb > host.free_memory_mb:
        problems.append(f"{host.free_memory_mb} of {host.memory_mb} MiB free")
    return problems


def utilization_after(spec: EnvSpec, host: QemuHostState) -> float:
    """The busiest of the host's resources once the environment runs there (0..1+)."""
    shares = [(host.reserved_vcpus + spec.vcpus) / max(1, host.vcpus),
              (host.reserved_memory_mb + spec.memory_mb) / max(1, host.memory_mb)]
    shares += [v / 100.0 for v in (host.cpu_pct, host.mem_pct) if v is not None]
    return max(shares)


def evaluate(spec: EnvSpec, host: QemuHostState, policy: EnvPolicy) -> HostCandidate:
    capability = capability_problems(spec, host)
    availability = availability_problems(host, policy)
    fit = fit_problems(spec, host) if not capability else []
    return HostCandidate(host_id=host.host_id, name=host.name, capable=not capability,
                         available=not availability, fits=not capability and not fit,
                         utilization=utilization_after(spec, host),
                         reasons=tuple(capability + availability + fit))


def _matches(host: QemuHostState, wanted: str) -> bool:
    return str(host.host_id) == wanted or host.name == wanted


def select_qemu_host(spec: EnvSpec, hosts: Iterable[QemuHostState],
                     policy: EnvPolicy = EnvPolicy()) -> EnvDecision:
    pool = list(hosts)
    rated = [(evaluate(spec, h, policy), h) for h in pool]
    eligible = sorted(((c, h) for c, h in rated if c.eligible),
                      key=lambda ch: (ch[0].utilization, ch[0].name, str(ch[0].host_id)))
    others = sorted(((c, h) for c, h in rated if not c.eligible),
                    key=lambda ch: (ch[0].name, str(ch[0].host_id)))
    candidates = tuple(c for c, _ in eligible + others)

    if spec.host is not None:
        pinned = [(c, h) for c, h in rated if _matches(h, spec.host)]
        if not pinned:
            return EnvDecision(EnvOutcome.UNKNOWN_HOST, None, candidates,
                               f"no QEMU host named {spec.host!r}",
                               alternatives=tuple(c.name for c, _ in eligible))
        cand, host = pinned[0]
        if cand.eligible:
            return EnvDecision(EnvOutcome.PLACED, host, candidates,
                               f"{host.name}: chosen by the requester")
        alternatives = tuple(c.name for c, h in eligible if h.host_id != host.host_id)
        outcome = EnvOutcome.WAIT_FOR_CAPACITY if cand.capable else EnvOutcome.NO_CAPABLE_HOST
        return EnvDecision(outcome, None, candidates,
                           f"{host.name} cannot take it now: {'; '.join(cand.reasons)}",
                           alternatives=alternatives, pinned_problems=cand.reasons)

    if eligible:
        best, host = eligible[0]
        return EnvDecision(EnvOutcome.PLACED, host, candidates,
                           f"{host.name}: lowest utilization after placing "
                           f"({best.utilization:.0%}) of {len(eligible)} that fit")
    if any(c.capable for c in candidates):
        why = "; ".join(f"{c.name}: {', '.join(c.reasons)}" for c in candidates if c.capable)
        return EnvDecision(EnvOutcome.WAIT_FOR_CAPACITY, None, candidates,
                           f"no capable host can take it now ({why})")
    why = "; ".join(f"{c.name}: {', '.join(c.reasons)}" for c in candidates) or "no QEMU hosts"
    return EnvDecision(EnvOutcome.NO_CAPABLE_HOST, None, candidates,
                       f"no QEMU host can ever run it ({why})")


@dataclass(frozen=True)
class Holding:
    """A reservation that will end: on which host, what it holds, expected seconds left."""

    host_id: uuid.UUID
    vcpus: int
    memory_mb: int
    ends_in_s: float


def estimated_wait(spec: EnvSpec, hosts: Sequence[QemuHostState],
                   holdings: Sequence[Holding], ahead: Sequence[EnvSpec],
                   policy: EnvPolicy = EnvPolicy()) -> float | None:
    """Seconds until a capable, available host has room, if reservations end at their
    lease and the requests ``ahead`` are placed first (first come, first served).

    None when no capable host is available at all (offline, maintenance, over the limit):
    then nobody can say when.
    """
    usable = {h.host_id: h for h in hosts
              if not capability_problems(spec, h) and not availability_problems(h, policy)}
    if not usable:
        return None
    best: float | None = None
    for host in usable.values():
        # walk the host's releases in time order; requests ahead take capacity first
        ends = [(hd.ends_in_s, hd.vcpus, hd.memory_mb) for hd in holdings
                if hd.host_id == host.host_id]
        heapq.heapify(ends)
        free_v, free_m = host.free_vcpus, host.free_memory_mb
        now = 0.0
        queue = [s for s in ahead if not capability_problems(s, host)] + [spec]
        for wanted in queue:
            while (wanted.vcpus > free_v or wanted.memory_mb > free_m) and ends:
                t, v, m = heapq.heappop(ends)
                now, free_v, free_m = max(now, t), free_v + v, free_m + m
            if wanted.vcpus > free_v or wanted.memory_mb > free_m:
                now = float("inf")
                break
            free_v, free_m = free_v - wanted.vcpus, free_m - wanted.memory_mb
            if wanted is not spec:
                heapq.heappush(ends, (now + wanted.lease_s, wanted.vcpus, wanted.memory_mb))
        if now != float("inf") and (best is None or now < best):
            best = now
    return best
