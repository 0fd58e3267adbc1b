"""PostgreSQL access: one schema per service, a transactional outbox, idempotent consumers.

* :class:`Database` — an asyncpg pool whose ``search_path`` is the service's own schema.
* ``async with db.transaction() as tx`` — a unit of work; ``tx.emit(event)`` writes the
  event to the outbox in the same transaction, so the write and the publish are atomic.
* ``async with db.consume(consumer, event) as tx`` — like ``transaction`` but yields
  ``None`` when this consumer already handled ``event.event_id`` (redelivery).
* :class:`OutboxRelay` — publishes committed outbox rows to JetStream (handed over in
  memory at commit; rows left behind by a crash or a failed publish are swept).
* :func:`migrate` — runs the service's Alembic migrations into its schema.
"""
from .database import Database, Transaction
from .migrate import migrate
from .outbox import OutboxRelay

__all__ = ["Database", "OutboxRelay", "Transaction", "migrate"]
