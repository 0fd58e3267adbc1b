"""Alembic environment shared by every service (see ``labfleet.shared.db.migrate``)."""
from __future__ import annotations

import asyncio
import zlib

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
URL: str = config.attributes["url"]
SCHEMA: str = config.attributes["schema"]


def run_sync(connection: Connection) -> None:
    lock_key = zlib.crc32(f"labfleet-migrate-{SCHEMA}".encode())
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
    connection.execute(text(f'SET search_path TO "{SCHEMA}", public'))
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table_schema=SCHEMA,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async() -> None:
    engine = create_async_engine(URL)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("labfleet migrations run online only")
asyncio.run(run_async())
