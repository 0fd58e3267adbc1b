"""Shared by the benchmarks: the real stack (servers from the environment, else embedded)."""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def real_stack(*, nats_sync_always: bool = True) -> Iterator[tuple[str, str]]:
    """Yield (nats_url, database_url); start embedded servers for what the env lacks.

    ``nats_sync_always``: the embedded NATS fsyncs every JetStream write, as ``labfleet
    up``'s does; False leaves NATS's default (the compose cluster's).
    """
    nats_url = os.environ.get("LABFLEET_NATS_URL")
    db_url = os.environ.get("LABFLEET_DATABASE_URL")
    stops = []
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-bench-"))
    try:
        if not nats_url:
            from labfleet.embedded import start_nats

            n = start_nats(tmp / "nats", sync_always=nats_sync_always)
            stops.append(n.stop)
            nats_url = n.url
        if not db_url:
            from labfleet.embedded import start_postgres

            p = start_postgres(tmp / "pg")
            stops.append(p.stop)
            db_url = p.url
        yield nats_url, db_url
    finally:
        for stop in reversed(stops):
            stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
