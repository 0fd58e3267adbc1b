"""Publishes what transactions wrote to the outbox, in order, at least once.

A crash after commit and before publish leaves the rows in place; the next relay (this
process restarted, or another replica) publishes them.  A crash after publish and before
delete publishes again with the same ``Nats-Msg-Id``, which JetStream drops as a duplicate.
Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so replicas never publish the same batch
concurrently.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from .database import Database, notify_channel

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, db: Database, js: Any, *, batch: int = 500, poll_s: float = 1.0,
                 ack_timeout_s: float = 10.0) -> None:
        self.db = db
        self.js = js
        self.batch = batch
        self.poll_s = poll_s
        self.ack_timeout_s = ack_timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self.published = 0

    async def start(self) -> None:
        self._listen_conn = await asyncpg.connect(self.db.url)
        await self._listen_conn.add_listener(notify_channel(self.db.schema), self._on_notify)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.db.schema}")

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listen_conn:
            await self._listen_conn.close()

    async def _run(self) -> None:
        while True:
            # cleared before the flush, not after: a commit notified while the flush runs
            # (its row not in the flush's snapshot) must wake the next one at once
            self._wake.clear()
            try:
                sent = await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if sent >= self.batch:
                continue  # more waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)

    async def flush(self) -> int:
        """Publish one batch; returns how many rows went out."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            # claim and delete in one statement; a failed publish rolls the delete back
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id "
                "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, subject, headers, payload",
                self.batch,
            )
            if not rows:
                return 0
            rows = sorted(rows, key=lambda r: r["id"])  # RETURNING order is not guaranteed
            # publishes of one batch go out together, in order (JetStream keeps a single
            # connection's order, and the ids are the dedupe keys), their acknowledgements
            # awaited together: one reply subscription and one deadline for the batch, not
            # a request with a timer of its own per row
            acks: list[asyncio.Future[Any]] = []
            try:
                for r in rows:
                    acks.append(await self.js.publish_async(
                        r["subject"], bytes(r["payload"]), headers=json.loads(r["headers"])))
                await asyncio.wait_for(asyncio.gather(*acks), timeout=self.ack_timeout_s)
            except BaseException:
                for ack in acks:  # unanswered: released, the rows stay (rolled back)
                    ack.cancel()
                raise
            self.published += len(rows)
            return len(rows)
