"""The builder's tables: builds, attempts, artifacts.  Functions over an open transaction."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from labfleet.shared.db import Transaction
from labfleet.shared.events.build import ArtifactInfo, BuildPhase, BuildSpec, BuildStatus, BuildView
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.resource import Arch

from ..domain.job import Attempt, AttemptOutcome, Job

Conn = Transaction | Any  # a Transaction, or the Database for reads outside one


@dataclass
class JobRecord:
    job: Job
    spec: BuildSpec
    server_id: uuid.UUID | None
    server_name: str | None
    commit: str | None


async def insert_job(tx: Transaction, build_id: uuid.UUID, spec: BuildSpec,
                     requested_by: str, at: datetime) -> bool:
    return bool(await tx.fetchval(
        "INSERT INTO builds (build_id, spec, repo_url, ref, arch, requested_by, status, "
        "created_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7) "
        "ON CONFLICT (build_id) DO NOTHING RETURNING true",
        build_id, spec.model_dump_json(), spec.repo_url, spec.ref, spec.arch.value,
        requested_by, at))


def _attempt(r: asyncpg.Record) -> Attempt:
    return Attempt(
        attempt=r["attempt"], allocation=r["allocation"], server_id=r["server_id"],
        server_name=r["server_name"], started_at=r["started_at"], build_dir=r["build_dir"],
        ended_at=r["ended_at"], outcome=AttemptOutcome(r["outcome"]) if r["outcome"] else None,
        error=ErrorInfo.model_validate_json(r["error"]) if r["error"] else None,
        instance=r["instance"])


async def attempts(db: Conn, build_id: uuid.UUID) -> list[Attempt]:
    rows = await db.fetch("SELECT * FROM attempts WHERE build_id = $1 ORDER BY attempt",
                          build_id)
    return [_attempt(r) for r in rows]


async def lock_job(tx: Transaction, build_id: uuid.UUID) -> JobRecord | None:
    """The job with its attempts, its row locked until the transaction ends."""
    row = await tx.fetchrow(
        "SELECT build_id, spec, status, allocation, cancel_requested, server_id, server_name, "
        "commit FROM builds WHERE build_id = $1 FOR UPDATE", build_id)
    if row is None:
        return None
    job = Job(build_id=build_id, status=BuildStatus(row["status"]),
              allocation=row["allocation"], attempts=tuple(await attempts(tx, build_id)),
              cancel_requested=row["cancel_requested"])
    return JobRecord(job=job, spec=BuildSpec.model_validate_json(row["spec"]),
                     server_id=row["server_id"], server_name=row["server_name"],
                     commit=row["commit"])


async def update_job(tx: Transaction, build_id: uuid.UUID, **fields: Any) -> None:
    """Set columns of a build; enum and model values are stored as their text."""
    sets, args = [], [build_id]
    for i, (column, value) in enumerate(fields.items(), start=2):
        if isinstance(value, ErrorInfo):
            value = value.model_dump_json()
        elif hasattr(value, "value") and not isinstance(value, uuid.UUID):
            value = value.value
        sets.append(f"{column} = ${i}")
        args.append(value)
    query = f"UPDATE builds SET {', '.join(sets)} WHERE build_id = $1"  # noqa: S608
    await tx.execute(query, *args)


async def set_wait(tx: Transaction, build_id: uuid.UUID, position: int,
                   estimated_start_s: float | None, at: datetime) -> bool:
    """Record a queue position unless a newer one is stored; False if the build is unknown."""
    known = await tx.fetchval("SELECT status FROM builds WHERE build_id = $1", build_id)
    if known is None:
        return False
    await tx.execute(
        "UPDATE builds SET position = $2, estimated_start_s = $3, wait_at = $4 "
        "WHERE build_id = $1 AND status = 'queued' AND (wait_at IS NULL OR wait_at < $4)",
        build_id, position, estimated_start_s, at)
    return True


async def add_attempt(tx: Transaction, build_id: uuid.UUID, a: Attempt) -> None:
    await tx.execute(
        "INSERT INTO attempts (build_id, attempt, allocation, server_id, server_name, "
        "build_dir, instance, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        build_id, a.attempt, a.allocation, a.server_id, a.server_name, a.build_dir,
        a.instance, a.started_at)


async def end_attempt(tx: Transaction, build_id: uuid.UUID, attempt: int,
                      outcome: AttemptOutcome, at: datetime,
                      error: ErrorInfo | None = None) -> bool:
    """Close an attempt still in progress; False if someone closed it already."""
    return (await tx.execute(
        "UPDATE attempts SET outcome = $3, ended_at = $4, error = $5 "
        "WHERE build_id = $1 AND attempt = $2 AND outcome IS NULL",
        build_id, attempt, outcome.value, at,
        error.model_dump_json() if error else None)).endswith(" 1")


async def set_build_dir(tx: Transaction, build_id: uuid.UUID, attempt: int,
                        build_dir: str) -> None:
    await tx.execute("UPDATE attempts SET build_dir = $3 WHERE build_id = $1 AND attempt = $2",
                     build_id, attempt, build_dir)


async def add_artifacts(tx: Transaction, build_id: uuid.UUID,
                        artifacts: list[ArtifactInfo]) -> None:
    for a in artifacts:
        await tx.execute(
            "INSERT INTO artifacts (build_id, name, size, sha256, object_name, bucket, backend) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (build_id, name) DO UPDATE SET "
            "size = $3, sha256 = $4, object_name = $5, bucket = $6, backend = $7",
            build_id, a.name, a.size, a.sha256, a.object_name, a.bucket, a.backend)


# ---- views ------------------------------------------------------------------------------


async def artifacts_of(db: Conn, build_id: uuid.UUID) -> list[ArtifactInfo]:
    rows = await db.fetch("SELECT name, size, sha256, object_name, bucket, backend FROM artifacts "
                          "WHERE build_id = $1 ORDER BY name", build_id)
    return [ArtifactInfo(**dict(r)) for r in rows]


def _attempt_dict(a: Attempt) -> dict[str, object]:
    return {"attempt": a.attempt, "allocation": a.allocation, "server_id": str(a.server_id),
            "server_name": a.server_name, "started_at": a.started_at.isoformat(),
            "ended_at": a.ended_at.isoformat() if a.ended_at else None,
            "outcome": a.outcome.value if a.outcome else None,
            "error": a.error.model_dump() if a.error else None}


async def _view(db: Conn, row: asyncpg.Record, tries: list[Attempt] | None = None,
                artifacts: list[ArtifactInfo] | None = None) -> BuildView:
    if tries is None:
        tries = await attempts(db, row["build_id"])
    if artifacts is None:
        artifacts = await artifacts_of(db, row["build_id"])
    return BuildView(
        build_id=row["build_id"], spec=BuildSpec.model_validate_json(row["spec"]),
        status=BuildStatus(row["status"]),
        phase=BuildPhase(row["phase"]) if row["phase"] else None,
        server_id=row["server_id"], server_name=row["server_name"], commit=row["commit"],
        attempt=len(tries) or 1, attempts=[_attempt_dict(a) for a in tries],
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] else None,
        created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], artifacts=artifacts,
        position=row["position"], estimated_start_s=row["estimated_start_s"])


async def view(db: Conn, build_id: uuid.UUID) -> BuildView | None:
    row = await db.fetchrow("SELECT * FROM builds WHERE build_id = $1", build_id)
    return await _view(db, row) if row else None


async def recent_views(db: Conn, limit: int) -> list[BuildView]:
    """The newest builds; attempts and artifacts in one query each, not one per build."""
    rows = await db.fetch("SELECT * FROM builds ORDER BY created_at DESC LIMIT $1", limit)
    ids = [r["build_id"] for r in rows]
    tries: dict[uuid.UUID, list[Attempt]] = {i: [] for i in ids}
    for r in await db.fetch("SELECT * FROM attempts WHERE build_id = ANY($1::uuid[]) "
                            "ORDER BY build_id, attempt", ids):
        tries[r["build_id"]].append(_attempt(r))
    stored: dict[uuid.UUID, list[ArtifactInfo]] = {i: [] for i in ids}
    for r in await db.fetch("SELECT build_id, name, size, sha256, object_name, bucket, backend "
                            "FROM artifacts WHERE build_id = ANY($1::uuid[]) ORDER BY name", ids):
        stored[r["build_id"]].append(ArtifactInfo(
            name=r["name"], size=r["size"], sha256=r["sha256"], object_name=r["object_name"],
            bucket=r["bucket"], backend=r["backend"]))
    return [await _view(db, r, tries[r["build_id"]], stored[r["build_id"]]) for r in rows]


async def find_succeeded(db: Conn, *, commit: str | None = None, ref: str | None = None,
                         arch: Arch | None = None, repo_url: str | None = None
                         ) -> uuid.UUID | None:
    """The newest succeeded build matching every given criterion."""
    where, args = ["status = 'succeeded'"], []
    if commit:
        args.append(commit.lower() + "%")
        where.append(f"commit LIKE ${len(args)}")
    if ref:
        args.append(ref)
        where.append(f"ref = ${len(args)}")
    if arch:
        args.append(arch.value)
        where.append(f"arch = ${len(args)}")
    if repo_url:
        args.append(repo_url)
        where.append(f"repo_url = ${len(args)}")
    return await db.fetchval(
        f"SELECT build_id FROM builds WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY finished_at DESC LIMIT 1", *args)

