"""Build server selection: which server should compile a build, and why.

:func:`select_build_server` is a pure function of the spec, the pool and the time.  It
filters (toolchain for the architecture, labels, lifecycle, health, free disk), then ranks
the servers left by expected completion: the estimated build time from history stretched
by the server's current utilization (busy slots, CPU %, load average).  Ties break on the
name, then the id, so the outcome never depends on the order the pool is listed in.  Every
candidate is reported with its reasons; that list is the decision log.
"""
from __future__ import annotations

import statistics
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from labfleet.shared.events.build import BuildSpec

from .servers import BuildServerState, availability_problems, capability_problems


class Outcome(StrEnum):
    PLACED = "placed"
    #: capable servers are available, but every slot is taken
    WAIT_FOR_SLOT = "wait_for_slot"
    #: capable servers exist, none is available now (offline, maintenance, disk)
    WAIT_FOR_SERVER = "wait_for_server"
    NO_CAPABLE_SERVER = "no_capable_server"


@dataclass(frozen=True)
class PlacementPolicy:
    min_free_disk_gb: float = 10.0
    #: servers set to pause on low disk take no build under this much free disk
    disk_warning_gb: float | None = None
    #: a sample older than this says nothing about the load now
    sample_max_age_s: float = 120.0


@dataclass(frozen=True)
class Candidate:
    server_id: uuid.UUID
    name: str
    capable: bool
    available: bool
    free_slots: int
    utilization: float
    estimate_s: float | None
    score: float | None
    reasons: tuple[str, ...]

    @property
    def eligible(self) -> bool:
        return self.capable and self.available

    def as_dict(self) -> dict[str, object]:
        return {
            "server_id": str(self.server_id), "name": self.name, "capable": self.capable,
            "available": self.available, "free_slots": self.free_slots,
            "utilization": round(self.utilization, 3), "estimate_s": self.estimate_s,
            "score": None if self.score is None else round(self.score, 3),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    chosen: BuildServerState | None
    #: eligible servers in rank order, then the others by name
    candidates: tuple[Candidate, ...]
    reason: str
    #: for a build pinned to one server: the names of servers that would do instead
    alternatives: tuple[str, ...] = field(default=())

    def candidate(self, server_id: uuid.UUID) -> Candidate | None:
        return next((c for c in self.candidates if c.server_id == server_id), None)


def utilization(server: BuildServerState, now: datetime, policy: PlacementPolicy) -> float:
    """0 = idle, 1 = fully used; the highest of busy slots, CPU and load per core."""
    busy = server.running / server.slots if server.slots > 0 else 1.0
    sample = server.sample
    if sample is None or (now - sample.at).total_seconds() > policy.sample_max_age_s:
        return busy
    cpu = sample.cpu_pct / 100.0
    load = sample.load1 / max(1, server.cpu_cores)
    return max(busy, min(cpu, 1.0), min(load, 1.0))


def _rank_key(c: Candidate) -> tuple[float, float, str, str]:
    return (c.score if c.score is not None else float("inf"), c.utilization, c.name,
            str(c.server_id))


def select_build_server(
    spec: BuildSpec,
    servers: Iterable[BuildServerState],
    now: datetime,
    *,
    policy: PlacementPolicy = PlacementPolicy(),
    estimates: Mapping[uuid.UUID, float] | None = None,
    avoid: frozenset[uuid.UUID] = frozenset(),
) -> Decision:
    """Choose a server with a free slot for ``spec``, or say why none is chosen.

    ``estimates`` maps a server to its expected build time for this spec (from history);
    ``avoid`` lists servers a previous attempt was lost on: they are used only when no
    other capable server exists.
    """
    pool = sorted(servers, key=lambda s: (s.name, str(s.server_id)))
    estimates = estimates or {}
    ids = {s.server_id for s in pool}
    known = [v for k, v in estimates.items() if k in ids]
    # an unknown server is assumed typical, so a missing history neither wins nor loses
    typical = statistics.median(known) if known else None

    capable_ids = {s.server_id for s in pool if not capability_problems(spec, s)
                   and (spec.server is None or s.matches(spec.server))}
    avoid_effective = avoid if capable_ids - avoid else frozenset()

    reports: list[Candidate] = []
    for server in pool:
        reasons = capability_problems(spec, server)
        if spec.server is not None and not server.matches(spec.server):
            reasons = [f"not the requested server {spec.server!r}", *reasons]
        if server.server_id in avoid_effective:
            reasons.append("a previous attempt lost this server; others are preferred")
        capable = not reasons
        unavailable = availability_problems(server, policy.min_free_disk_gb, policy.disk_warning_gb)
        util = utilization(server, now, policy)
        estimate = estimates.get(server.server_id, typical)
        score = (estimate if estimate is not None else 1.0) * (1.0 + util)
        if capable and not unavailable and server.free_slots == 0:
            unavailable_now = [f"all {server.slots} slot(s) busy"]
        else:
            unavailable_now = []
        reports.append(Candidate(
            server_id=server.server_id, name=server.name, capable=capable,
            available=not unavailable, free_slots=server.free_slots, utilization=util,
            estimate_s=estimate, score=score if capable and not unavailable else None,
            reasons=tuple(reasons + unavailable + unavailable_now)))

    eligible = sorted((c for c in reports if c.eligible), key=_rank_key)
    others = [c for c in reports if not c.eligible]
    ordered = tuple(eligible + others)
    alternatives = _alternatives(spec, pool, now, policy, estimates, avoid)

    free = [c for c in eligible if c.free_slots > 0]
    if free:
        best = free[0]
        chosen = next(s for s in pool if s.server_id == best.server_id)
        why = (f"{best.name}: lowest expected completion (utilization "
               f"{best.utilization:.0%}" + (f", estimate {best.estimate_s:.0f}s" if
                                            best.estimate_s is not None else "") + ")")
        return Decision(Outcome.PLACED, chosen, ordered, why, alternatives)
    if eligible:
        return Decision(Outcome.WAIT_FOR_SLOT, None, ordered,
                        "every capable server is busy; queued for the first free slot",
                        alternatives)
    if any(c.capable for c in reports):
        names = ", ".join(c.name for c in reports if c.capable)
        return Decision(Outcome.WAIT_FOR_SERVER, None, ordered,
                        f"no capable server is available now ({names}); queued until one is",
                        alternatives)
    if spec.server is not None and not any(s.matches(spec.server) for s in pool):
        why = f"no build server has the id or name {spec.server!r}"
    else:
        why = f"no build server can build for {spec.arch}" + (
            f" with labels {spec.labels}" if spec.labels else "")
    return Decision(Outcome.NO_CAPABLE_SERVER, None, ordered, why, alternatives)


def _alternatives(spec: BuildSpec, pool: list[BuildServerState], now: datetime,
                  policy: PlacementPolicy, estimates: Mapping[uuid.UUID, float],
                  avoid: frozenset[uuid.UUID]) -> tuple[str, ...]:
    """Servers that could take a pinned build if it were not pinned, best first."""
    if spec.server is None:
        return ()
    pinned = {s.server_id for s in pool if s.matches(spec.server)}
    free = select_build_server(spec.model_copy(update={"server": None}), pool, now,
                               policy=policy, estimates=estimates, avoid=avoid)
    return tuple(c.name for c in free.candidates if c.eligible and c.server_id not in pinned)
