"""The pool and the unit of work.  See the package docstring."""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from ..bus import event_headers
from ..events.envelope import Event

if TYPE_CHECKING:
    from .outbox import OutboxRelay

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def plain_dsn(url: str) -> str:
    """asyncpg takes ``postgresql://``; accept SQLAlchemy-style ``postgresql+asyncpg://`` too."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


#: subject, event id, headers, payload: an outbox row before it is written
OutboxRow = tuple[str, uuid.UUID, dict[str, str], bytes]

_INSERT_OUTBOX = ("INSERT INTO outbox (subject, event_id, headers, payload) "
                  "VALUES ($1, $2, $3, $4) RETURNING id")
# one statement for a batch's rows; ids are drawn in the order of the select (ORDER BY n),
# so the returned ids, sorted, are the rows' in the order they were emitted
_INSERT_OUTBOX_MANY = (
    "INSERT INTO outbox (subject, event_id, headers, payload) "
    "SELECT s, e, h, p FROM unnest($1::text[], $2::uuid[], $3::jsonb[], $4::bytea[]) "
    "WITH ORDINALITY AS t(s, e, h, p, n) ORDER BY n RETURNING id")


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed outbox row, as the transaction that wrote it knows it."""

    id: int
    subject: str
    headers: dict[str, str]
    payload: bytes


def committed_rows(ids: list[int], rows: list[OutboxRow]) -> list[Committed]:
    return [Committed(i, subject, headers, payload)
            for i, (subject, _, headers, payload) in zip(sorted(ids), rows, strict=True)]


@dataclass
class BatchUnit:
    """One transaction shared by the handlers of a fetched batch (``Database.batch``).

    What the handlers would each send in a round trip of their own is sent once per
    batch: the idempotency records of all the batch's events (``claim``, on the first
    ``consume`` of a consumer), the deferred writes (``Transaction.defer``, one pipelined
    ``executemany`` per statement) and the outbox rows.
    """

    db: Database
    conn: asyncpg.Connection
    outbox: list[OutboxRow] = field(default_factory=list)
    #: the ids of the batch's events, claimed for a consumer at its first ``consume``
    event_ids: frozenset[uuid.UUID] = frozenset()
    #: per consumer, the ids claimed and not yet handed to a handler
    claimed: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    #: statement → argument tuples, in the order the statements first appeared
    writes: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    async def claim(self, consumer: str, event_id: uuid.UUID) -> bool:
        """True once per event and consumer unless handled before (in an earlier batch)."""
        fresh = self.claimed.get(consumer)
        if fresh is None:
            await self.flush_writes()  # a statement goes out: what was deferred goes first
            rows = await self.conn.fetch(_CLAIM_MANY, consumer,
                                         list(self.event_ids | {event_id}))
            fresh = self.claimed[consumer] = {r["event_id"] for r in rows}
        elif event_id not in fresh and event_id not in self.event_ids:
            # not one of the batch's own events: claimed on its own
            await self.flush_writes()
            return bool(await self.conn.fetchval(_MARK_PROCESSED, consumer, event_id))
        if event_id in fresh:
            fresh.discard(event_id)  # a second consume of it in this batch is a redelivery
            return True
        return False

    async def flush_writes(self) -> None:
        """Run the deferred writes: one pipelined ``executemany`` per statement."""
        writes, self.writes = self.writes, {}
        for query, args in writes.items():
            await self.conn.executemany(query, args)


_batch: ContextVar[BatchUnit | None] = ContextVar("labfleet_db_batch", default=None)


@dataclass
class Transaction:
    conn: asyncpg.Connection
    schema: str
    emitted: list[Event] = field(default_factory=list)
    #: the batch unit of work this transaction is part of, if any: its outbox rows and
    #: deferred writes are collected there and written at its end
    unit: BatchUnit | None = None
    #: outbox rows this transaction wrote (outside a batch unit), with their ids
    written: list[tuple[int, OutboxRow]] = field(default_factory=list)

    async def emit(self, event: Event, subject: str | None = None) -> None:
        """Queue ``event`` for publishing; it leaves only if the transaction commits."""
        subj = subject or event.subject
        if self.unit is not None:
            self.unit.outbox.append((subj, event.event_id, event_headers(event),
                                     event.model_dump_json().encode()))
            self.emitted.append(event)
            return
        row = (subj, event.event_id, event_headers(event), event.model_dump_json().encode())
        row_id = await (await self._flushed()).fetchval(
            _INSERT_OUTBOX, subj, event.event_id, json.dumps(row[2]), row[3])
        self.written.append((row_id, row))
        self.emitted.append(event)  # handed to the relay once the transaction commits

    async def defer(self, query: str, *args: Any) -> None:
        """A write whose result the handler does not need.

        Alone it runs at once.  In a batch unit of work it waits, with the batch's other
        deferred writes of the same statement, for one pipelined ``executemany``; deferred
        writes run before the next statement any handler of the batch sends (so every read
        sees them), grouped by statement in the order the statements first appeared, and
        always before the commit.
        """
        if self.unit is None:
            await self.conn.execute(query, *args)
            return
        self.unit.writes.setdefault(query, []).append(args)

    async def _flushed(self) -> asyncpg.Connection:
        if self.unit is not None and self.unit.writes:
            await self.unit.flush_writes()
        return self.conn

    # convenience pass-throughs
    async def execute(self, query: str, *args: Any) -> str:
        return await (await self._flushed()).execute(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await (await self._flushed()).fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await (await self._flushed()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self._flushed()).fetchval(query, *args)


_MARK_PROCESSED = ("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
                   "ON CONFLICT DO NOTHING RETURNING true")
_CLAIM_MANY = ("INSERT INTO processed_events (consumer, event_id) "
               "SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection returned to the pool needs beyond asyncpg's own clean-up: nothing.

    asyncpg always rolls back a transaction left open and drops listeners; its default
    reset also sends ``RESET ALL``, ``CLOSE ALL``, ``UNLISTEN *`` and
    ``pg_advisory_unlock_all()``, one more round trip per use of a connection (a sixth of a
    batch's statements under bench/bus.py).  Nothing here changes session state: settings
    come with the connection (``server_settings``), locks are transaction-level
    (``pg_advisory_xact_lock``), there are no cursors outside transactions and no LISTEN.
    """


class Database:
    def __init__(self, url: str, schema: str, *, min_size: int = 2, max_size: int = 10) -> None:
        if not _SCHEMA_RE.match(schema):
            raise ValueError(f"schema name {schema!r} is not a plain lower-case identifier")
        self.url = plain_dsn(url)
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._relay: OutboxRelay | None = None

    def attach_relay(self, relay: OutboxRelay) -> None:
        """Committed outbox rows are handed to ``relay`` from now on (see ``outbox``)."""
        self._relay = relay

    def detach_relay(self, relay: OutboxRelay) -> None:
        if self._relay is relay:
            self._relay = None

    def _hand_over(self, rows: list[Committed]) -> None:
        # without a relay (stopping) the rows wait in the table for a sweep
        if rows and self._relay is not None:
            self._relay.hand_over(rows)

    async def connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=self.min_size,
            max_size=self.max_size,
            server_settings={"search_path": f"{self.schema},public",
                             "application_name": f"labfleet-{self.schema}"},
            reset=_keep_session,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.connect() was not awaited")
        return self._pool

    def _joined(self) -> BatchUnit | None:
        unit = _batch.get()
        return unit if unit is not None and unit.db is self else None

    @asynccontextmanager
    async def batch(self, event_ids: list[uuid.UUID] | None = None) -> AsyncIterator[BatchUnit]:
        """One transaction that ``transaction()``/``consume()`` calls in this task join.

        ``event_ids``: the events the batch will consume, claimed together (see
        :class:`BatchUnit`).
        """
        async with self.pool.acquire() as conn:
            ids: list[int] = []
            async with conn.transaction():
                unit = BatchUnit(db=self, conn=conn, event_ids=frozenset(event_ids or ()))
                token = _batch.set(unit)
                try:
                    yield unit
                    await unit.flush_writes()
                    if unit.outbox:
                        columns = list(zip(*unit.outbox, strict=True))
                        ids = [r[0] for r in await conn.fetch(
                            _INSERT_OUTBOX_MANY, columns[0], columns[1],
                            [json.dumps(h) for h in columns[2]], columns[3])]
                finally:
                    _batch.reset(token)
            self._hand_over(committed_rows(ids, unit.outbox))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        unit = self._joined()
        if unit is not None:
            yield Transaction(conn=unit.conn, schema=self.schema, unit=unit)
            return
        async with self.pool.acquire() as conn:
            tx = Transaction(conn=conn, schema=self.schema)
            async with conn.transaction():
                yield tx
            self._hand_over_written(tx)

    @asynccontextmanager
    async def consume(self, consumer: str, event: Event) -> AsyncIterator[Transaction | None]:
        """A transaction that records ``event`` as handled by ``consumer``.

        Yields ``None`` (and does nothing) when the event was handled before, so a
        redelivered message has no second effect.
        """
        unit = self._joined()
        if unit is not None:
            inserted = await unit.claim(consumer, event.event_id)
            yield Transaction(conn=unit.conn, schema=self.schema,
                              unit=unit) if inserted else None
            return
        async with self.pool.acquire() as conn:
            tx = Transaction(conn=conn, schema=self.schema)
            async with conn.transaction():
                inserted = await conn.fetchval(_MARK_PROCESSED, consumer, event.event_id)
                yield tx if inserted else None
            self._hand_over_written(tx)

    def _hand_over_written(self, tx: Transaction) -> None:
        if tx.written:
            self._hand_over(committed_rows([i for i, _ in tx.written],
                                           [row for _, row in tx.written]))

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self.pool.execute(query, *args)
