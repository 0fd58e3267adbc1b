"""Publishes what transactions wrote to the outbox, in order, at least once.

Two paths, one table:

* **Handed over** (the usual one): a :class:`~.database.Database` whose relay is
  attached gives the relay the rows of each transaction right after it commits
  (``hand_over``).  The relay publishes them from memory at once, in commit order, and
  deletes their rows once JetStream has acknowledged them.  No query stands between a
  commit and its publish: the relay does not read back what its own process just wrote.
* **Swept**: rows that stay in the table past ``grace_s`` — the process crashed between
  commit and delete, a publish failed (NATS away), or another replica of the service
  died with rows in hand — are claimed with ``FOR UPDATE SKIP LOCKED``, published and
  deleted by whichever replica's sweep gets there first (every ``poll_s``; at start, at
  once).

A row published twice (handed over and later swept, or a crash between publish and
delete) carries the same ``Nats-Msg-Id`` both times, and JetStream stores it once (within
the stream's duplicate window, which is far longer than ``grace_s``).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from .database import Committed, Database

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, db: Database, js: Any, *, batch: int = 500, poll_s: float = 1.0,
                 grace_s: float = 5.0, ack_timeout_s: float = 10.0,
                 delete_every_s: float = 0.1) -> None:
        self.db = db
        self.js = js
        self.batch = batch
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.ack_timeout_s = ack_timeout_s
        self.delete_every_s = delete_every_s
        self._queue: deque[Committed] = deque()
        self._ready = asyncio.Event()
        self._to_delete: list[int] = []
        self._delete_ready = asyncio.Event()
        self._deleting = asyncio.Lock()
        self._acks: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        #: rows published by the sweep (left behind, not handed over)
        self.swept = 0

    async def start(self) -> None:
        self.db.attach_relay(self)
        name = self.db.schema
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name=f"outbox-publish-{name}"),
            asyncio.create_task(self._delete_loop(), name=f"outbox-delete-{name}"),
            asyncio.create_task(self._sweep_loop(), name=f"outbox-sweep-{name}"),
        ]

    async def stop(self, drain_s: float = 5.0) -> None:
        """Publish what was handed over (for up to ``drain_s``), delete it, then stop.

        What cannot go out in that time stays in the table for the next sweep.
        """
        self.db.detach_relay(self)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                while self._queue or self._acks:
                    await asyncio.sleep(0.01)
                with contextlib.suppress(Exception):
                    await self._delete_published()
        for task in [*self._tasks, *self._acks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._acks, return_exceptions=True)
        self._tasks = []

    # ---- handed over --------------------------------------------------------------

    def hand_over(self, rows: Sequence[Committed]) -> None:
        """Rows of a transaction that has just committed, in the order it wrote them."""
        self._queue.extend(rows)
        self._ready.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                rows = [self._queue.popleft() for _ in range(min(len(self._queue), self.batch))]
                try:
                    acks = await self._publish(rows)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the rows stay for the sweep
                    log.warning("outbox publish failed; the sweep retries it",
                                extra={"rows": len(rows), "error": f"{type(exc).__name__}: {exc}"})
                    continue
                # the next rows go out while these acknowledgements are awaited: publishes
                # of one connection are stored in the order they were sent
                task = asyncio.create_task(self._confirm(rows, acks))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)

    async def _publish(self, rows: Sequence[Committed]) -> list[asyncio.Future[Any]]:
        acks: list[asyncio.Future[Any]] = []
        try:
            for r in rows:
                acks.append(await self.js.publish_async(r.subject, r.payload, headers=r.headers))
        except BaseException:
            for ack in acks:
                ack.cancel()
            raise
        return acks

    async def _confirm(self, rows: Sequence[Committed], acks: list[asyncio.Future[Any]]) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*acks), timeout=self.ack_timeout_s)
        except asyncio.CancelledError:
            for ack in acks:
                ack.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - unacknowledged rows stay for the sweep
            for ack in acks:
                ack.cancel()
            log.warning("outbox publish not acknowledged; the sweep retries it",
                        extra={"rows": len(rows), "error": f"{type(exc).__name__}: {exc}"})
            return
        self.published += len(rows)
        self._to_delete.extend(r.id for r in rows)
        self._delete_ready.set()

    async def _delete_loop(self) -> None:
        """Delete acknowledged rows, many per statement, off the publishing path.

        A delete waits ``delete_every_s`` for more acknowledgements to join it (under load
        a statement per acknowledged batch cost the database as much as the batches' own
        commits), unless a whole ``batch`` of rows is already waiting.
        """
        while True:
            await self._delete_ready.wait()
            self._delete_ready.clear()
            if len(self._to_delete) < self.batch:
                await asyncio.sleep(self.delete_every_s)
            try:
                await self._delete_published()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - kept for the next round
                log.exception("deleting published outbox rows failed; retrying")
                await asyncio.sleep(1.0)
                self._delete_ready.set()

    async def _delete_published(self) -> None:
        async with self._deleting:  # stop() waits for a delete under way, then does the rest
            ids, self._to_delete = self._to_delete, []
            if not ids:
                return
            try:
                await self.db.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])",
                                           ids)
            except BaseException:
                self._to_delete[:0] = ids
                raise

    # ---- swept --------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            try:
                sent = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sweep failed; retrying")
                sent = 0
            if sent < self.batch:
                await asyncio.sleep(self.poll_s)

    async def sweep(self, older_than_s: float | None = None) -> int:
        """Publish one batch of rows left in the table; returns how many went out."""
        grace = self.grace_s if older_than_s is None else older_than_s
        async with self.db.pool.acquire() as conn, conn.transaction():
            # claim and delete in one statement; a failed publish rolls the delete back
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                "WHERE created_at <= now() - make_interval(secs => $2) ORDER BY id "
                "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, subject, headers, payload",
                self.batch, grace,
            )
            if not rows:
                return 0
            rows = sorted(rows, key=lambda r: r["id"])  # RETURNING order is not guaranteed
            acks = await self._publish([
                Committed(r["id"], r["subject"], json.loads(r["headers"]), bytes(r["payload"]))
                for r in rows])
            try:
                await asyncio.wait_for(asyncio.gather(*acks), timeout=self.ack_timeout_s)
            except BaseException:
                for ack in acks:  # unanswered: released, the rows stay (rolled back)
                    ack.cancel()
                raise
        self.published += len(rows)
        self.swept += len(rows)
        log.info("outbox rows left behind were published", extra={"rows": len(rows)})
        return len(rows)
