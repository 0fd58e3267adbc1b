"""An embedded PostgreSQL (pip's ``pgserver``, which ships the server binaries).

pgserver runs the server as an unprivileged user when started as root, keeps the data in
the given directory, and listens on a private unix socket; the URL it hands out is the one
every service uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EmbeddedPostgres:
    url: str
    server: Any
    pgdata: Path

    def stop(self) -> None:
        try:
            self.server.cleanup()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass


def start_postgres(data_dir: Path, *, database: str = "labfleet") -> EmbeddedPostgres:
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    return EmbeddedPostgres(url=server.get_uri(database), server=server, pgdata=pgdata)
