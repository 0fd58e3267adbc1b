"""The placement pass: queued builds onto free slots, under the pool lock.

Every change that can free or add capacity (a build finished, a server came online, a
build was requested) ends its transaction with :func:`place_queued`.  The transaction
first takes a PostgreSQL advisory lock for the build pool, so two scheduler replicas
decide one after the other on committed data and never give one slot twice.
"""
from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, replace
from datetime import datetime

from labfleet.shared.db import Transaction
from labfleet.shared.events.build import BuildAllocated, BuildSpec
from labfleet.shared.events.request import PolicyDecided, RequestQueued

from .adapters import repository as repo
from .config import SchedulerConfig
from .domain.estimates import estimated_start, remaining, typical_duration
from .domain.placement import Decision, Outcome, PlacementPolicy, select_build_server
from .domain.servers import BuildServerState

#: one lock for the one build pool (a 32-bit key, stable across processes)
BUILD_POOL_LOCK = zlib.crc32(b"labfleet.scheduler.build-pool")


async def lock_pool(tx: Transaction) -> None:
    await tx.execute("SELECT pg_advisory_xact_lock($1)", BUILD_POOL_LOCK)


@dataclass
class Placement:
    build_id: uuid.UUID
    decision: Decision
    attempt: int | None = None
    position: int | None = None
    estimated_start_s: float | None = None


class _Estimator:
    """Duration estimates per kind of build, read once per pass."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self._cache: dict[tuple[str, str, str, str], repo.Durations] = {}

    async def durations(self, spec: BuildSpec) -> repo.Durations:
        key = (spec.repo_url, spec.arch.value, spec.config, " ".join(spec.make_targets))
        if key not in self._cache:
            self._cache[key] = await repo.durations(self.tx, spec)
        return self._cache[key]

    async def per_server(self, spec: BuildSpec) -> dict[uuid.UUID, float]:
        d = await self.durations(spec)
        out = {sid: typical_duration(v) for sid, v in d.per_server.items()}
        return {k: v for k, v in out.items() if v is not None}

    async def typical(self, spec: BuildSpec) -> float | None:
        return typical_duration((await self.durations(spec)).overall)


def placement_spec(entry: repo.QueueEntry) -> BuildSpec:
    """The spec as placement sees it: a pinned build names its server by id."""
    if entry.pinned_server_id is None:
        return entry.spec
    return entry.spec.model_copy(update={"server": str(entry.pinned_server_id)})


async def place_queued(tx: Transaction, config: SchedulerConfig, policy: PlacementPolicy,
                       now: datetime) -> dict[uuid.UUID, Placement]:
    """Allocate what fits, re-estimate what waits; the caller holds the pool lock."""
    servers = {s.server_id: s for s in await repo.load_pool(tx, config.build_slots)}
    active = await repo.active_entries(tx)
    estimator = _Estimator(tx)
    results: dict[uuid.UUID, Placement] = {}
    waiting: list[tuple[repo.QueueEntry, Decision]] = []

    for entry in (e for e in active if e.status == "queued"):
        spec = placement_spec(entry)
        decision = select_build_server(spec, servers.values(), now, policy=policy,
                                       estimates=await estimator.per_server(spec),
                                       avoid=entry.avoid)
        if decision.outcome != Outcome.PLACED or decision.chosen is None:
            waiting.append((entry, decision))
            continue
        server = decision.chosen
        attempt = entry.attempt + 1
        await repo.mark_allocated(tx, entry.build_id, server.server_id, server.name, attempt, now)
        servers[server.server_id] = replace(server, running=server.running + 1)
        entry.status, entry.server_id, entry.allocated_at = "allocated", server.server_id, now
        reason = decision.reason if attempt == 1 else f"attempt {attempt}: {decision.reason}"
        await tx.emit(BuildAllocated(build_id=entry.build_id, server_id=server.server_id,
                                     server_name=server.name, spec=entry.spec, attempt=attempt,
                                     reason=reason))
        await _log_decision(tx, entry.build_id, decision, reason)
        results[entry.build_id] = Placement(entry.build_id, decision, attempt=attempt,
                                            position=0, estimated_start_s=0.0)

    busy = [e for e in active if e.status in ("allocated", "running")]
    for index, (entry, decision) in enumerate(waiting):
        capable = {c.server_id for c in decision.candidates if c.capable}
        ahead = [e for e, d in waiting[:index]
                 if capable & {c.server_id for c in d.candidates if c.capable}]
        position = len(ahead) + 1
        estimate = await _estimated_start(entry, decision, servers, busy, ahead, estimator, now)
        results[entry.build_id] = Placement(entry.build_id, decision, position=position,
                                            estimated_start_s=estimate)
        first_time = entry.position is None
        if first_time or entry.position != position or _moved(entry.estimated_start_s, estimate):
            await repo.set_wait(tx, entry.build_id, position, estimate)
            await tx.emit(RequestQueued(request_id=entry.build_id, kind="build",
                                        position=position, estimated_start_s=estimate,
                                        reason=decision.reason))
        if first_time:
            await _log_decision(tx, entry.build_id, decision, decision.reason)
    return results


def _moved(before: float | None, after: float | None) -> bool:
    """Whether an estimate changed enough to tell anyone (10 s or 10 %)."""
    if before is None or after is None:
        return before != after
    return abs(before - after) > max(10.0, 0.1 * before)


async def _estimated_start(entry: repo.QueueEntry, decision: Decision,
                           servers: dict[uuid.UUID, BuildServerState],
                           busy: list[repo.QueueEntry], ahead: list[repo.QueueEntry],
                           estimator: _Estimator, now: datetime) -> float | None:
    usable = [servers[c.server_id] for c in decision.candidates if c.eligible]
    if not usable:
        return None
    slots: list[float | None] = []
    for server in usable:
        running = [e for e in busy if e.server_id == server.server_id]
        for e in running:
            since = e.started_at or e.allocated_at or now
            left = remaining(await estimator.typical(e.spec), (now - since).total_seconds())
            slots.append(left)
        slots.extend([0.0] * max(0, server.slots - len(running)))
    durations = [await estimator.typical(e.spec) for e in ahead]
    return estimated_start(slots, durations)


#: candidates kept in the decision log: the best ones; a pool of thousands would make
#: every decision a megabyte
LOGGED_CANDIDATES = 50


async def _log_decision(tx: Transaction, build_id: uuid.UUID, decision: Decision,
                        reason: str) -> None:
    candidates = [c.as_dict() for c in decision.candidates[:LOGGED_CANDIDATES]]
    if len(decision.candidates) > LOGGED_CANDIDATES:
        candidates.append({"omitted": len(decision.candidates) - LOGGED_CANDIDATES})
    chosen = decision.chosen.name if decision.chosen else None
    await repo.record_decision(tx, build_id, decision.outcome.value, chosen, reason, candidates)
    await tx.emit(PolicyDecided(request_id=build_id, kind="build", chosen=chosen,
                                candidates=candidates, reason=reason))
