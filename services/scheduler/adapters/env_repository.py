"""The scheduler's QEMU host projection and environment queue, inside a unit of work.

The allocated rows of ``env_requests`` are the reservations: a host's reserved vCPUs and
memory are their sums.  :func:`lock_hosts` takes a row lock on every host, in id order, so
two placements decide one after the other on committed reservations and never
over-commit a host, whatever the number of scheduler replicas.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from labfleet.shared.db import Transaction
from labfleet.shared.events.env import EnvSpec, ResolvedArtifacts
from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import Lifecycle, ResourceView

from ..domain.env_placement import QemuHostState


async def lock_hosts(tx: Transaction) -> None:
    await tx.execute("SELECT host_id FROM qemu_hosts ORDER BY host_id FOR UPDATE")


async def upsert_host(tx: Transaction, view: ResourceView, at: datetime) -> bool:
    """Store ``view`` unless a newer one is stored; True when applied."""
    row = await tx.fetchval(
        "INSERT INTO qemu_hosts (host_id, name, view, lifecycle, updated_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host_id) DO UPDATE SET name = $2, "
        "view = $3, lifecycle = $4, updated_at = $5 "
        "WHERE qemu_hosts.updated_at IS NULL OR qemu_hosts.updated_at <= $5 RETURNING true",
        view.resource_id, view.name, view.model_dump_json(), view.lifecycle.value, at)
    return bool(row)


async def remove_host(tx: Transaction, host_id: uuid.UUID) -> None:
    await tx.execute("DELETE FROM qemu_hosts WHERE host_id = $1", host_id)


async def set_health(tx: Transaction, host_id: uuid.UUID, status: HealthStatus, reason: str,
                     at: datetime) -> bool:
    row = await tx.fetchval(
        "INSERT INTO qemu_hosts (host_id, name, health, health_reason, health_at) "
        "VALUES ($1, '', $2, $3, $4) ON CONFLICT (host_id) DO UPDATE SET health = $2, "
        "health_reason = $3, health_at = $4 "
        "WHERE qemu_hosts.health_at IS NULL OR qemu_hosts.health_at <= $4 RETURNING true",
        host_id, status.value, reason, at)
    return bool(row)


def _pct(used: float, total: float) -> float | None:
    return None if total <= 0 else 100.0 * used / total


async def set_sample(tx: Transaction, sample: HostSample) -> bool:
    mem = _pct(sample.mem_used_mb, sample.mem_total_mb)
    disk = _pct(sample.disk_total_gb - sample.disk_free_gb, sample.disk_total_gb)
    row = await tx.fetchval(
        "INSERT INTO qemu_hosts (host_id, name, sample_at, cpu_pct, mem_pct, disk_pct) "
        "VALUES ($1, '', $2, $3, $4, $5) ON CONFLICT (host_id) DO UPDATE SET sample_at = $2, "
        "cpu_pct = $3, mem_pct = $4, disk_pct = $5 "
        "WHERE qemu_hosts.sample_at IS NULL OR qemu_hosts.sample_at < $2 RETURNING true",
        sample.resource_id, sample.at, sample.cpu_pct, mem, disk)
    return bool(row)


async def load_hosts(tx: Transaction) -> list[QemuHostState]:
    rows = await tx.fetch(
        "SELECT h.*, COALESCE(r.vcpus, 0) AS reserved_vcpus, "
        "COALESCE(r.memory_mb, 0) AS reserved_memory_mb FROM qemu_hosts h "
        "LEFT JOIN (SELECT host_id, sum(vcpus) AS vcpus, sum(memory_mb) AS memory_mb "
        "FROM env_requests WHERE status = 'allocated' GROUP BY host_id) r USING (host_id) "
        "WHERE h.view IS NOT NULL")
    return [s for s in (_host_state(r) for r in rows) if s is not None]


def _host_state(row: asyncpg.Record) -> QemuHostState | None:
    view = ResourceView.model_validate_json(row["view"])
    caps = view.qemu
    if caps is None:
        return None
    vcpus = caps.allocatable_vcpus if caps.allocatable_vcpus is not None else caps.cpu_cores
    memory = (caps.allocatable_memory_mb if caps.allocatable_memory_mb is not None
              else max(0, caps.memory_mb - 1024))
    return QemuHostState(
        host_id=view.resource_id, name=view.name, lifecycle=Lifecycle(row["lifecycle"]),
        health=HealthStatus(row["health"]), health_reason=row["health_reason"],
        cpu_arch=caps.cpu_arch, guests=frozenset(g.arch for g in caps.guests),
        kvm_usable=caps.kvm.usable, vcpus=vcpus, memory_mb=memory,
        reserved_vcpus=int(row["reserved_vcpus"]),
        reserved_memory_mb=int(row["reserved_memory_mb"]),
        cpu_pct=row["cpu_pct"], mem_pct=row["mem_pct"], disk_pct=row["disk_pct"])


# ---- the environment queue ------------------------------------------------------------


@dataclass
class EnvEntry:
    env_id: uuid.UUID
    spec: EnvSpec
    resolved: ResolvedArtifacts
    requested_by: str
    status: str
    pinned_host_id: uuid.UUID | None
    host_id: uuid.UUID | None
    position: int | None
    estimated_wait_s: float | None
    allocated_at: datetime | None


def _entry(row: asyncpg.Record) -> EnvEntry:
    return EnvEntry(
        env_id=row["env_id"], spec=EnvSpec.model_validate_json(row["spec"]),
        resolved=ResolvedArtifacts.model_validate_json(row["resolved"]),
        requested_by=row["requested_by"], status=row["status"],
        pinned_host_id=row["pinned_host_id"], host_id=row["host_id"],
        position=row["position"], estimated_wait_s=row["estimated_wait_s"],
        allocated_at=row["allocated_at"])


async def enqueue(tx: Transaction, env_id: uuid.UUID, spec: EnvSpec,
                  resolved: ResolvedArtifacts, requested_by: str,
                  pinned_host_id: uuid.UUID | None) -> None:
    await tx.execute(
        "INSERT INTO env_requests (env_id, spec, resolved, requested_by, status, "
        "pinned_host_id, vcpus, memory_mb, lease_s) "
        "VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8)",
        env_id, spec.model_dump_json(), resolved.model_dump_json(), requested_by,
        pinned_host_id, spec.vcpus, spec.memory_mb, spec.lease_s)


async def get(tx: Transaction, env_id: uuid.UUID) -> EnvEntry | None:
    row = await tx.fetchrow("SELECT * FROM env_requests WHERE env_id = $1", env_id)
    return _entry(row) if row else None


async def queued(tx: Transaction) -> list[EnvEntry]:
    rows = await tx.fetch("SELECT * FROM env_requests WHERE status = 'queued' ORDER BY seq")
    return [_entry(r) for r in rows]


async def allocated(tx: Transaction) -> list[EnvEntry]:
    rows = await tx.fetch("SELECT * FROM env_requests WHERE status = 'allocated' ORDER BY seq")
    return [_entry(r) for r in rows]


async def mark_allocated(tx: Transaction, env_id: uuid.UUID, host_id: uuid.UUID,
                         host_name: str, at: datetime) -> None:
    await tx.execute(
        "UPDATE env_requests SET status = 'allocated', host_id = $2, host_name = $3, "
        "allocated_at = $4, position = 0, estimated_wait_s = 0 WHERE env_id = $1",
        env_id, host_id, host_name, at)


async def mark_ended(tx: Transaction, env_id: uuid.UUID, status: str, at: datetime) -> bool:
    """Release or reject; True when the row held a reservation or a queue place."""
    return (await tx.execute(
        "UPDATE env_requests SET status = $2, released_at = $3, position = NULL, "
        "estimated_wait_s = NULL WHERE env_id = $1 AND status IN ('queued', 'allocated')",
        env_id, status, at)).endswith(" 1")


async def set_wait(tx: Transaction, env_id: uuid.UUID, position: int,
                   estimate: float | None) -> None:
    await tx.execute("UPDATE env_requests SET position = $2, estimated_wait_s = $3 "
                     "WHERE env_id = $1", env_id, position, estimate)


async def pinned_to(tx: Transaction, host_id: uuid.UUID) -> list[uuid.UUID]:
    return [r["env_id"] for r in await tx.fetch(
        "SELECT env_id FROM env_requests WHERE status = 'queued' AND pinned_host_id = $1",
        host_id)]
