"""The deployer's environments and deployments, inside a unit of work (or the pool for
reads)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from labfleet.shared.db import Transaction
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.env import (
    DeploymentView,
    EnvSpec,
    EnvStatus,
    EnvView,
    ResolvedArtifacts,
)


async def insert_env(tx: Transaction, env_id: uuid.UUID, spec: EnvSpec,
                     resolved: ResolvedArtifacts, requested_by: str, at: datetime) -> bool:
    return bool(await tx.fetchval(
        "INSERT INTO environments (env_id, spec, resolved, requested_by, status, created_at) "
        "VALUES ($1, $2, $3, $4, 'queued', $5) ON CONFLICT (env_id) DO NOTHING RETURNING true",
        env_id, spec.model_dump_json(), resolved.model_dump_json(), requested_by, at))


async def set_wait(tx: Transaction, env_id: uuid.UUID, position: int,
                   estimate: float | None) -> bool:
    return (await tx.execute(
        "UPDATE environments SET position = $2, estimated_wait_s = $3 "
        "WHERE env_id = $1 AND status = 'queued'", env_id, position, estimate)).endswith(" 1")


async def lock_env(tx: Transaction, env_id: uuid.UUID) -> asyncpg.Record | None:
    return await tx.fetchrow("SELECT * FROM environments WHERE env_id = $1 FOR UPDATE", env_id)


async def allocate(tx: Transaction, env_id: uuid.UUID, host_id: uuid.UUID, host_name: str,
                   vm_name: str, at: datetime) -> None:
    await tx.execute(
        "UPDATE environments SET status = 'allocated', host_id = $2, host_name = $3, "
        "vm_name = $4, allocated_at = $5, position = 0, estimated_wait_s = 0 "
        "WHERE env_id = $1 AND status = 'queued'", env_id, host_id, host_name, vm_name, at)


async def set_status(tx: Transaction, env_id: uuid.UUID, status: EnvStatus, *,
                     error: ErrorInfo | None = None, deployed_at: datetime | None = None,
                     released_at: datetime | None = None, libvirt_uri: str | None = None) -> None:
    await tx.execute(
        "UPDATE environments SET status = $2, error = $3, "
        "deployed_at = COALESCE($4, deployed_at), released_at = COALESCE($5, released_at), "
        "libvirt_uri = COALESCE($6, libvirt_uri) WHERE env_id = $1",
        env_id, status.value, error.model_dump_json() if error else None, deployed_at,
        released_at, libvirt_uri)


async def new_deployment(tx: Transaction, env_id: uuid.UUID, resolved: ResolvedArtifacts,
                         requested_by: str) -> int:
    number = int(await tx.fetchval(
        "UPDATE environments SET current = current + 1 WHERE env_id = $1 RETURNING current",
        env_id))
    await tx.execute(
        "INSERT INTO deployments (env_id, number, build_id, commit, resolved, status, "
        "requested_by) VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
        env_id, number, resolved.build_id, resolved.commit, resolved.model_dump_json(),
        requested_by)
    return number


async def deployment(tx: Transaction, env_id: uuid.UUID, number: int) -> asyncpg.Record | None:
    return await tx.fetchrow("SELECT * FROM deployments WHERE env_id = $1 AND number = $2",
                             env_id, number)


async def update_deployment(tx: Transaction, env_id: uuid.UUID, number: int, **fields: Any
                            ) -> None:
    cols = []
    args: list[Any] = [env_id, number]
    for name, value in fields.items():
        if name in ("error", "timings") and value is not None and not isinstance(value, str):
            value = value.model_dump_json() if hasattr(value, "model_dump_json") else json.dumps(value)
        args.append(value)
        cols.append(f"{name} = ${len(args)}")
    await tx.execute(f"UPDATE deployments SET {', '.join(cols)} "  # noqa: S608 - our own names
                     "WHERE env_id = $1 AND number = $2", *args)


async def previous_build(tx: Transaction, env_id: uuid.UUID) -> asyncpg.Record | None:
    """The latest deployment of another build than the current one (booted ones first)."""
    return await tx.fetchrow(
        "SELECT d.* FROM deployments d JOIN environments e USING (env_id) "
        "JOIN deployments c ON c.env_id = e.env_id AND c.number = e.current "
        "WHERE d.env_id = $1 AND d.number < e.current AND d.build_id <> c.build_id "
        "ORDER BY (d.status = 'booted') DESC, d.number DESC LIMIT 1", env_id)


# ---- views ----------------------------------------------------------------------------


def _deployment_view(row: asyncpg.Record) -> DeploymentView:
    return DeploymentView(
        number=row["number"], build_id=row["build_id"], commit=row["commit"],
        status=row["status"], failure=row["failure"],
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] else None,
        started_at=row["started_at"], finished_at=row["finished_at"],
        transferred_bytes=row["transferred_bytes"], timings=json.loads(row["timings"]),
        attempts=row["attempts"])


def _env_view(row: asyncpg.Record, deployments: list[asyncpg.Record]) -> EnvView:
    resolved = ResolvedArtifacts.model_validate_json(row["resolved"])
    current = next((d for d in deployments if d["number"] == row["current"]), None)
    console = None
    if row["libvirt_uri"] and row["vm_name"] and row["status"] not in ("released", "rejected"):
        console = f"virsh -c {row['libvirt_uri']} console {row['vm_name']}"
    return EnvView(
        env_id=row["env_id"], spec=EnvSpec.model_validate_json(row["spec"]),
        status=EnvStatus(row["status"]), requested_by=row["requested_by"],
        host_id=row["host_id"], host_name=row["host_name"], vm_name=row["vm_name"],
        build_id=current["build_id"] if current else resolved.build_id,
        commit=(current["commit"] if current else resolved.commit) or None,
        deployed_at=row["deployed_at"], created_at=row["created_at"],
        released_at=row["released_at"],
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] else None,
        console=console, libvirt_uri=row["libvirt_uri"],
        deployments=[_deployment_view(d) for d in deployments],
        position=row["position"], estimated_wait_s=row["estimated_wait_s"])


async def view(conn: Any, env_id: uuid.UUID) -> EnvView | None:
    row = await conn.fetchrow("SELECT * FROM environments WHERE env_id = $1", env_id)
    if row is None:
        return None
    deps = await conn.fetch("SELECT * FROM deployments WHERE env_id = $1 ORDER BY number",
                            env_id)
    return _env_view(row, deps)


async def views(conn: Any, limit: int, include_released: bool) -> list[EnvView]:
    rows = await conn.fetch(
        "SELECT * FROM environments WHERE $2 OR status NOT IN ('released', 'rejected') "
        "ORDER BY seq DESC LIMIT $1", limit, include_released)
    if not rows:
        return []
    deps = await conn.fetch("SELECT * FROM deployments WHERE env_id = ANY($1::uuid[]) "
                            "ORDER BY number", [r["env_id"] for r in rows])
    by_env: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for d in deps:
        by_env.setdefault(d["env_id"], []).append(d)
    return [_env_view(r, by_env.get(r["env_id"], [])) for r in rows]


async def boot_log(conn: Any, env_id: uuid.UUID, number: int) -> str | None:
    return await conn.fetchval("SELECT boot_log FROM deployments WHERE env_id = $1 AND "
                               "number = $2", env_id, number)
