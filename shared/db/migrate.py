"""Run a service's Alembic migrations into its own schema.

Each service keeps its revisions in ``services/<name>/migrations/`` and its own version
table (``<schema>.alembic_version``); the environment script is shared
(``shared/db/alembic/env.py``).  A PostgreSQL advisory lock keyed by the schema makes
concurrent replicas migrate one at a time.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from .database import plain_dsn

ENV_DIR = Path(__file__).with_name("alembic")


def alembic_config(database_url: str, schema: str, versions: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ENV_DIR))
    cfg.set_main_option("version_locations", str(versions))
    cfg.set_main_option("path_separator", "os")
    url = plain_dsn(database_url).replace("postgresql://", "postgresql+asyncpg://", 1)
    cfg.attributes["url"] = url
    cfg.attributes["schema"] = schema
    return cfg


async def migrate(database_url: str, schema: str, versions: Path, revision: str = "head") -> None:
    cfg = alembic_config(database_url, schema, versions)
    # Alembic's command API is synchronous and env.py runs its own loop: keep it off ours.
    await asyncio.to_thread(command.upgrade, cfg, revision)
