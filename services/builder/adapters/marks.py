"""Pins, tags and expired artifacts: the builder's retention tables."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from labfleet.shared.events.build import ArtifactInfo, BuildView

from . import repository as repo

Conn = Any  # a Transaction or the Database


@dataclass(frozen=True)
class Marks:
    pinned: bool = False
    tags: tuple[str, ...] = ()
    artifacts_expired_at: datetime | None = None


async def marks_of(db: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, Marks]:
    rows = await db.fetch(
        "SELECT b.build_id, coalesce(m.pinned, false) AS pinned, "
        "coalesce(m.tags, '{}') AS tags, b.artifacts_expired_at "
        "FROM builds b LEFT JOIN build_marks m USING (build_id) "
        "WHERE b.build_id = ANY($1::uuid[])", ids)
    return {r["build_id"]: Marks(r["pinned"], tuple(r["tags"]), r["artifacts_expired_at"])
            for r in rows}


async def with_marks(db: Conn, views: list[BuildView]) -> list[BuildView]:
    marks = await marks_of(db, [v.build_id for v in views])
    out = []
    for v in views:
        m = marks.get(v.build_id, Marks())
        out.append(v.model_copy(update={"pinned": m.pinned, "tags": list(m.tags),
                                        "artifacts_expired_at": m.artifacts_expired_at}))
    return out


async def views_where(db: Conn, *, server_id: uuid.UUID | None, active_only: bool,
                      limit: int) -> list[BuildView]:
    where, args = [], []
    if server_id is not None:
        args.append(server_id)
        where.append(f"server_id = ${len(args)}")
    if active_only:
        where.append("status IN ('queued', 'allocated', 'running')")
    args.append(limit)
    ids = await db.fetch(
        f"SELECT build_id FROM builds WHERE {' AND '.join(where) or 'true'} "  # noqa: S608
        f"ORDER BY created_at DESC LIMIT ${len(args)}", *args)
    views = [await repo.view(db, r["build_id"]) for r in ids]
    return [v for v in views if v is not None]


async def set_pinned(tx: Conn, build_id: uuid.UUID, pinned: bool) -> None:
    await tx.execute(
        "INSERT INTO build_marks (build_id, pinned) VALUES ($1, $2) ON CONFLICT (build_id) "
        "DO UPDATE SET pinned = $2, updated_at = now()", build_id, pinned)


async def change_tags(tx: Conn, build_id: uuid.UUID, tags: list[str], remove: bool) -> None:
    if remove:
        await tx.execute(
            "UPDATE build_marks SET tags = ARRAY(SELECT t FROM unnest(tags) t "
            "WHERE NOT t = ANY($2::text[])), updated_at = now() WHERE build_id = $1",
            build_id, tags)
        return
    await tx.execute(
        "INSERT INTO build_marks (build_id, tags) VALUES ($1, $2) ON CONFLICT (build_id) "
        "DO UPDATE SET tags = ARRAY(SELECT DISTINCT t FROM unnest(build_marks.tags || $2) t "
        "ORDER BY t), updated_at = now()", build_id, sorted(set(tags)))


async def expired_builds(db: Conn, before: datetime, limit: int = 100) -> list[uuid.UUID]:
    """Finished before ``before``, artifacts still stored, neither pinned nor tagged."""
    rows = await db.fetch(
        "SELECT b.build_id FROM builds b LEFT JOIN build_marks m USING (build_id) "
        "WHERE b.finished_at < $1 AND b.artifacts_expired_at IS NULL "
        "AND NOT coalesce(m.pinned, false) AND coalesce(cardinality(m.tags), 0) = 0 "
        "AND EXISTS (SELECT 1 FROM artifacts a WHERE a.build_id = b.build_id) "
        "ORDER BY b.finished_at LIMIT $2", before, limit)
    return [r["build_id"] for r in rows]


async def lock_for_expiry(tx: Conn, build_id: uuid.UUID) -> list[ArtifactInfo] | None:
    """The build's artifacts, its row locked; None when it is no longer to expire
    (pinned or tagged meanwhile, or expired by another replica)."""
    keep = await tx.fetchval(
        "SELECT b.artifacts_expired_at IS NOT NULL OR coalesce(m.pinned, false) "
        "OR coalesce(cardinality(m.tags), 0) > 0 FROM builds b "
        "LEFT JOIN build_marks m USING (build_id) WHERE b.build_id = $1 FOR UPDATE OF b",
        build_id)
    if keep is None or keep:
        return None
    return await repo.artifacts_of(tx, build_id)


async def mark_expired(tx: Conn, build_id: uuid.UUID, at: datetime) -> None:
    await tx.execute("DELETE FROM artifacts WHERE build_id = $1", build_id)
    await tx.execute("UPDATE builds SET artifacts_expired_at = $2 WHERE build_id = $1",
                     build_id, at)
