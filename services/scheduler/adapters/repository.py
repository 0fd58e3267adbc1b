"""Reading and writing the scheduler's tables inside a unit of work.

Every function takes the open :class:`Transaction`; the caller decides the boundaries
(and holds the pool lock when it decides placements).
"""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from labfleet.shared.db import Transaction
from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import Lifecycle, ResourceView

from ..config import SLOTS_LABEL
from ..domain.servers import BuildServerState, LoadSample

# ---- the pool ---------------------------------------------------------------------------


async def upsert_server(tx: Transaction, view: ResourceView, at: datetime
                        ) -> tuple[Lifecycle | None, bool]:
    """Store ``view`` unless a newer one is stored; returns (previous lifecycle, applied)."""
    previous = await tx.fetchrow(
        "SELECT lifecycle, updated_at FROM build_servers WHERE server_id = $1 FOR UPDATE",
        view.resource_id)
    if previous is not None and previous["updated_at"] > at:
        return Lifecycle(previous["lifecycle"]), False
    await tx.execute(
        "INSERT INTO build_servers (server_id, name, view, lifecycle, updated_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_id) DO UPDATE SET name = $2, "
        "view = $3, lifecycle = $4, updated_at = $5",
        view.resource_id, view.name, view.model_dump_json(), view.lifecycle.value, at)
    return (Lifecycle(previous["lifecycle"]) if previous else None), True


async def remove_server(tx: Transaction, server_id: uuid.UUID) -> None:
    for table in ("build_servers", "server_health", "server_samples"):
        await tx.execute(f"DELETE FROM {table} WHERE server_id = $1", server_id)  # noqa: S608


async def set_health(tx: Transaction, server_id: uuid.UUID, status: HealthStatus, reason: str,
                     at: datetime) -> bool:
    """Record a health change unless a newer one is stored; True when applied."""
    row = await tx.fetchval(
        "INSERT INTO server_health (server_id, status, reason, changed_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (server_id) DO UPDATE SET status = $2, "
        "reason = $3, changed_at = $4 WHERE server_health.changed_at <= $4 RETURNING true",
        server_id, status.value, reason, at)
    return bool(row)


async def set_sample(tx: Transaction, sample: HostSample) -> float | None:
    """Record a sample unless a newer one is stored; returns the previous free disk."""
    previous = await tx.fetchrow(
        "SELECT at, disk_free_gb FROM server_samples WHERE server_id = $1 FOR UPDATE",
        sample.resource_id)
    if previous is not None and previous["at"] >= sample.at:
        return float(previous["disk_free_gb"])
    await tx.execute(
        "INSERT INTO server_samples (server_id, at, cpu_pct, load1, cpu_cores, disk_free_gb) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server_id) DO UPDATE SET at = $2, "
        "cpu_pct = $3, load1 = $4, cpu_cores = $5, disk_free_gb = $6",
        sample.resource_id, sample.at, sample.cpu_pct, sample.load1, sample.cpu_cores,
        sample.disk_free_gb)
    return None if previous is None else float(previous["disk_free_gb"])


async def server_known(tx: Transaction, server_id: uuid.UUID) -> bool:
    return bool(await tx.fetchval("SELECT true FROM build_servers WHERE server_id = $1",
                                  server_id))


async def load_pool(tx: Transaction, default_slots: int) -> list[BuildServerState]:
    rows = await tx.fetch(
        "SELECT s.server_id, s.view, h.status, m.at, m.cpu_pct, m.load1, m.cpu_cores, "
        "m.disk_free_gb, (SELECT count(*) FROM build_queue q WHERE q.server_id = s.server_id "
        "AND q.status IN ('allocated', 'running')) AS running "
        "FROM build_servers s LEFT JOIN server_health h USING (server_id) "
        "LEFT JOIN server_samples m USING (server_id)")
    return [_server_state(r, default_slots) for r in rows]


def _server_state(row: asyncpg.Record, default_slots: int) -> BuildServerState:
    view = ResourceView.model_validate_json(row["view"])
    caps = view.capabilities
    sample = None
    if row["at"] is not None:
        sample = LoadSample(at=row["at"], cpu_pct=row["cpu_pct"], load1=row["load1"],
                            disk_free_gb=row["disk_free_gb"])
    try:
        slots = int(view.labels.get(SLOTS_LABEL, default_slots))
    except ValueError:
        slots = default_slots
    toolchains = (frozenset(t.arch for t in caps.toolchains) if caps
                  else frozenset(view.architectures))
    return BuildServerState(
        server_id=view.resource_id, name=view.name, toolchains=toolchains,
        declared=frozenset(view.architectures), labels=dict(view.labels),
        lifecycle=view.lifecycle,
        health=HealthStatus(row["status"]) if row["status"] else HealthStatus.UNKNOWN,
        cpu_cores=(caps.cpu_cores if caps else None) or row["cpu_cores"] or 1,
        slots=max(0, slots), running=int(row["running"]),
        sample=sample, registered_disk_free_gb=caps.disk_free_gb if caps else None,
        pause_on_low_disk=view.pause_on_low_disk)


# ---- the queue --------------------------------------------------------------------------


@dataclass
class QueueEntry:
    build_id: uuid.UUID
    seq: int
    spec: BuildSpec
    requested_by: str
    status: str
    pinned_server_id: uuid.UUID | None
    server_id: uuid.UUID | None
    server_name: str | None
    attempt: int
    avoid: frozenset[uuid.UUID]
    position: int | None
    estimated_start_s: float | None
    enqueued_at: datetime
    allocated_at: datetime | None
    started_at: datetime | None


_ENTRY_COLUMNS = ("build_id, seq, spec, requested_by, status, pinned_server_id, server_id, "
                  "server_name, attempt, avoid, position, estimated_start_s, enqueued_at, "
                  "allocated_at, started_at")


def _entry(row: asyncpg.Record) -> QueueEntry:
    return QueueEntry(
        build_id=row["build_id"], seq=row["seq"],
        spec=BuildSpec.model_validate_json(row["spec"]),
        requested_by=row["requested_by"], status=row["status"],
        pinned_server_id=row["pinned_server_id"], server_id=row["server_id"],
        server_name=row["server_name"], attempt=row["attempt"],
        avoid=frozenset(row["avoid"] or ()), position=row["position"],
        estimated_start_s=row["estimated_start_s"], enqueued_at=row["enqueued_at"],
        allocated_at=row["allocated_at"], started_at=row["started_at"])


async def enqueue(tx: Transaction, build_id: uuid.UUID, spec: BuildSpec, requested_by: str,
                  pinned_server_id: uuid.UUID | None) -> bool:
    """Add a build to the queue; False when it is already there (a redelivery)."""
    return bool(await tx.fetchval(
        "INSERT INTO build_queue (build_id, spec, requested_by, status, pinned_server_id) "
        "VALUES ($1, $2, $3, 'queued', $4) ON CONFLICT (build_id) DO NOTHING RETURNING true",
        build_id, spec.model_dump_json(), requested_by, pinned_server_id))


async def get_entry(tx: Transaction, build_id: uuid.UUID) -> QueueEntry | None:
    query = f"SELECT {_ENTRY_COLUMNS} FROM build_queue WHERE build_id = $1 FOR UPDATE"  # noqa: S608
    row = await tx.fetchrow(query, build_id)
    return _entry(row) if row else None


async def active_entries(tx: Transaction) -> list[QueueEntry]:
    """Queued, allocated and running builds, oldest first."""
    rows = await tx.fetch(f"SELECT {_ENTRY_COLUMNS} FROM build_queue "  # noqa: S608
                          "WHERE status <> 'finished' ORDER BY seq")
    return [_entry(r) for r in rows]


async def mark_allocated(tx: Transaction, build_id: uuid.UUID, server_id: uuid.UUID,
                         server_name: str, attempt: int, at: datetime) -> None:
    await tx.execute(
        "UPDATE build_queue SET status = 'allocated', server_id = $2, server_name = $3, "
        "attempt = $4, allocated_at = $5, position = NULL, estimated_start_s = NULL "
        "WHERE build_id = $1", build_id, server_id, server_name, attempt, at)


async def mark_running(tx: Transaction, build_id: uuid.UUID, server_id: uuid.UUID,
                       at: datetime) -> bool:
    return (await tx.execute(
        "UPDATE build_queue SET status = 'running', started_at = $3 "
        "WHERE build_id = $1 AND server_id = $2 AND status = 'allocated'",
        build_id, server_id, at)).endswith(" 1")


async def requeue(tx: Transaction, build_id: uuid.UUID, *, avoid: uuid.UUID | None = None,
                  error: ErrorInfo | None = None) -> None:
    await tx.execute(
        "UPDATE build_queue SET status = 'queued', server_id = NULL, server_name = NULL, "
        "allocated_at = NULL, started_at = NULL, position = NULL, estimated_start_s = NULL, "
        "avoid = CASE WHEN $2::uuid IS NULL THEN avoid ELSE array_append(avoid, $2::uuid) END, "
        "last_error = COALESCE($3::jsonb, last_error) WHERE build_id = $1",
        build_id, avoid, error.model_dump_json() if error else None)


async def allocated_not_started(tx: Transaction, server_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await tx.fetch(
        "SELECT build_id FROM build_queue WHERE server_id = $1 AND status = 'allocated' "
        "ORDER BY seq", server_id)
    return [r["build_id"] for r in rows]


async def pinned_to(tx: Transaction, server_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await tx.fetch(
        "SELECT build_id FROM build_queue WHERE pinned_server_id = $1 AND status = 'queued'",
        server_id)
    return [r["build_id"] for r in rows]


async def set_wait(tx: Transaction, build_id: uuid.UUID, position: int,
                   estimated_start_s: float | None) -> None:
    await tx.execute(
        "UPDATE build_queue SET position = $2, estimated_start_s = $3 WHERE build_id = $1",
        build_id, position, estimated_start_s)


async def mark_finished(tx: Transaction, build_id: uuid.UUID, at: datetime) -> bool:
    """Take a build out of the queue; its row stays a while for late events (history)."""
    done = (await tx.execute(
        "UPDATE build_queue SET status = 'finished', finished_at = $2, position = NULL, "
        "estimated_start_s = NULL WHERE build_id = $1 AND status <> 'finished'",
        build_id, at)).endswith(" 1")
    await tx.execute("DELETE FROM build_queue WHERE status = 'finished' "
                     "AND finished_at < $1::timestamptz - interval '1 day'", at)
    return done


# ---- history and decisions --------------------------------------------------------------


def _kind(spec: BuildSpec) -> tuple[str, str, str, str]:
    return (spec.repo_url, spec.arch.value, spec.config, " ".join(spec.make_targets))


async def record_history(tx: Transaction, build_id: uuid.UUID, server_id: uuid.UUID | None,
                         spec: BuildSpec, duration_s: float, at: datetime) -> None:
    await tx.execute(
        "INSERT INTO build_history (build_id, server_id, repo_url, arch, config, targets, "
        "duration_s, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (build_id) DO NOTHING", build_id, server_id, *_kind(spec), duration_s, at)


@dataclass
class Durations:
    """Past durations of builds like one spec: per server and overall, newest first."""

    per_server: dict[uuid.UUID, list[float]]
    overall: list[float]


async def durations(tx: Transaction, spec: BuildSpec, limit: int = 50) -> Durations:
    rows = await tx.fetch(
        "SELECT server_id, duration_s FROM build_history WHERE repo_url = $1 AND arch = $2 "
        "AND config = $3 AND targets = $4 ORDER BY finished_at DESC LIMIT $5",
        *_kind(spec), limit)
    per: dict[uuid.UUID, list[float]] = defaultdict(list)
    for r in rows:
        if r["server_id"] is not None:
            per[r["server_id"]].append(r["duration_s"])
    return Durations(per_server=dict(per), overall=[r["duration_s"] for r in rows])


async def record_decision(tx: Transaction, request_id: uuid.UUID, outcome: str,
                          chosen: str | None, reason: str,
                          candidates: list[dict[str, object]]) -> None:
    await tx.execute(
        "INSERT INTO decisions (request_id, outcome, chosen, reason, candidates) "
        "VALUES ($1, $2, $3, $4, $5)", request_id, outcome, chosen, reason,
        json.dumps(candidates))
