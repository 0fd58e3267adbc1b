"""Sample history in PostgreSQL: written in batches, read by resource and time, pruned by age.

Every host sends a sample every few seconds; one INSERT per sample would make the
database the monitor's bottleneck at lab scale.  :class:`SampleHistory` queues samples
and writes them with one ``COPY`` per second (or per ``max_batch``).  A crash loses at
most that second of history — the current state is in KV, the stream holds a day.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta

import asyncpg
from labfleet.shared.db import Database
from labfleet.shared.events.health import HostSample
from labfleet.shared.events.resource import ResourceKind

log = logging.getLogger(__name__)

COLUMNS = ("resource_id", "at", "kind", "cpu_pct", "load1", "cpu_cores", "mem_total_mb",
           "mem_used_mb", "disk_total_gb", "disk_free_gb", "compile_procs")

RETENTION = timedelta(days=7)


def _record(s: HostSample) -> tuple[object, ...]:
    return (s.resource_id, s.at, s.kind.value, s.cpu_pct, s.load1, s.cpu_cores, s.mem_total_mb,
            s.mem_used_mb, s.disk_total_gb, s.disk_free_gb, s.compile_procs)


def _sample(row: asyncpg.Record) -> HostSample:
    return HostSample(**{**dict(row), "kind": ResourceKind(row["kind"])})


class SampleHistory:
    def __init__(self, db: Database, *, flush_s: float = 1.0, max_batch: int = 2000) -> None:
        self.db = db
        self.flush_s = flush_s
        self.max_batch = max_batch
        self._pending: list[tuple[object, ...]] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def add(self, sample: HostSample) -> None:
        self._pending.append(_record(sample))
        if len(self._pending) >= self.max_batch:
            self._full.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sample-history-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=self.flush_s)
            self._full.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the rows; the next flush retries
                log.exception("writing sample history failed; retrying")

    async def flush(self) -> int:
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        try:
            async with self.db.pool.acquire() as conn:
                await conn.copy_records_to_table("samples", records=batch, columns=COLUMNS,
                                                 schema_name=self.db.schema)
        except BaseException:
            self._pending[:0] = batch[-10 * self.max_batch:]  # bounded: never grow forever
            raise
        self.written += len(batch)
        return len(batch)

    async def between(self, resource_id: uuid.UUID, since: datetime | None,
                      until: datetime | None, limit: int) -> list[HostSample]:
        """The newest ``limit`` samples in the window, oldest first."""
        await self.flush()  # a reader expects what the dashboard already showed
        rows = await self.db.fetch(
            f"SELECT {', '.join(COLUMNS)} FROM samples WHERE resource_id = $1 "
            "AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at <= $3) "
            "ORDER BY at DESC LIMIT $4", resource_id, since, until, limit)
        return [_sample(r) for r in reversed(rows)]

    async def averaged(self, resource_id: uuid.UUID, since: datetime | None,
                       until: datetime | None, bucket_s: int, limit: int) -> list[HostSample]:
        """One averaged sample per ``bucket_s`` seconds (a week of 5 s polls is 120,000 rows;
        its plot needs a few hundred points), the newest ``limit`` buckets, oldest first."""
        await self.flush()
        rows = await self.db.fetch(
            "SELECT resource_id, to_timestamp(floor(extract(epoch FROM at) / $4) * $4) AS at, "
            "min(kind) AS kind, avg(cpu_pct)::real AS cpu_pct, avg(load1)::real AS load1, "
            "max(cpu_cores) AS cpu_cores, max(mem_total_mb) AS mem_total_mb, "
            "avg(mem_used_mb)::integer AS mem_used_mb, max(disk_total_gb) AS disk_total_gb, "
            "avg(disk_free_gb)::real AS disk_free_gb, max(compile_procs) AS compile_procs "
            "FROM samples WHERE resource_id = $1 "
            "AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at <= $3) "
            "GROUP BY resource_id, 2 ORDER BY 2 DESC LIMIT $5",
            resource_id, since, until, float(bucket_s), limit)
        return [_sample(r) for r in reversed(rows)]

    async def latest(self) -> dict[uuid.UUID, HostSample]:
        rows = await self.db.fetch(
            f"SELECT DISTINCT ON (resource_id) {', '.join(COLUMNS)} FROM samples "
            "WHERE at > now() - $1::interval ORDER BY resource_id, at DESC", RETENTION)
        return {r["resource_id"]: _sample(r) for r in rows}

    async def prune(self, older_than: timedelta = RETENTION) -> int:
        status = await self.db.execute("DELETE FROM samples WHERE at < now() - $1::interval",
                                       older_than)
        return int(status.split()[-1])

    async def forget(self, resource_id: uuid.UUID) -> None:
        self._pending = [r for r in self._pending if r[0] != resource_id]
        await self.db.execute("DELETE FROM samples WHERE resource_id = $1", resource_id)
