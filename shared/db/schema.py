"""Tables every service schema has: the outbox and the processed-events record.

Called from each service's first Alembic revision.
"""
from __future__ import annotations

from alembic import op

OUTBOX_DDL = """
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    subject    text        NOT NULL,
    event_id   uuid        NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_age ON processed_events (processed_at);
"""

# Until revision "outbox handed over" of each service, a statement trigger NOTIFYed the
# relay at each commit and the relay read the rows back; the relay now gets a committed
# transaction's rows from the process that wrote them (see ``outbox``), and the trigger
# only cost each commit a NOTIFY (which PostgreSQL serialises across sessions).
DROP_NOTIFY = """
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
"""


def run_sql(script: str) -> None:
    """Execute a script of ``;``-terminated statements one by one.

    The asyncpg driver prepares every statement, and a prepared statement holds exactly
    one command.  Statements here are plain DDL: a ``;`` ends a statement only at the end
    of a line (write ``$$`` function bodies with their own ``op.execute``).
    """
    statement: list[str] = []
    for line in script.splitlines():
        statement.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(statement).strip().rstrip(";")
            if text:
                op.execute(text)
            statement = []
    rest = "\n".join(statement).strip()
    if rest:
        op.execute(rest)


def create_outbox_tables() -> None:
    run_sql(OUTBOX_DDL)


def drop_outbox_notify() -> None:
    """For schemas created when the outbox still had its NOTIFY trigger (each service's
    ``*_outbox_handed_over`` revision upgrades with this)."""
    run_sql(DROP_NOTIFY)


def keep_schema() -> None:
    """A downgrade that changes nothing (the NOTIFY trigger is not put back: the relay no
    longer listens, it would only slow commits down)."""


def drop_outbox_tables() -> None:
    run_sql("DROP TABLE processed_events;\nDROP TABLE outbox;\n"
            "DROP FUNCTION IF EXISTS outbox_notify();")
