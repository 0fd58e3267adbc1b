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
            nats_url = n.operator_url  # the benchmark's own clients log in as the operator
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


class CpuMeter:
    """CPU seconds spent on this machine between :meth:`start` and :meth:`stop`: in all
    (``/proc/stat``, every process and the kernel's own work) and per program name (each
    process's own time plus that of the children it has reaped, from ``/proc/<pid>/stat``).

    Where every part of a transfer runs on the same cores, ``cpu_s / cores`` is the least
    wall time the transfer can take, whatever overlaps with what."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self._busy0 = 0.0
        self._procs0: dict[tuple[int, int], tuple[str, float]] = {}
        self.cpu_s = 0.0
        self.by_program: dict[str, float] = {}

    @classmethod
    def busy(cls) -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest is already in user)
        return (sum(fields[:8]) - fields[3] - fields[4]) / cls.TICK

    @classmethod
    def processes(cls) -> dict[tuple[int, int], tuple[str, float]]:
        """(pid, start time) → (program, CPU seconds): a pid reused meanwhile is another
        process.  Kernel workers are counted together (their name changes with the work
        they do)."""
        out: dict[tuple[int, int], tuple[str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    raw = f.read()
            except OSError:
                continue  # gone meanwhile
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            if comm.startswith("kworker/"):
                comm = "kworker"
            rest = raw[raw.rindex(")") + 2:].split()
            # fields 14-17 (utime stime cutime cstime) and 22 (starttime), counted from 1
            # with the pid and the comm as fields 1 and 2
            out[(int(entry.name), int(rest[19]))] = (
                comm, sum(int(x) for x in rest[11:15]) / cls.TICK)
        return out

    def start(self) -> CpuMeter:
        self._procs0 = self.processes()
        self._busy0 = self.busy()
        return self

    def stop(self) -> CpuMeter:
        self.cpu_s = self.busy() - self._busy0
        by: dict[str, float] = {}
        for key, (comm, t) in self.processes().items():
            before = self._procs0.get(key)
            spent = t - (before[1] if before else 0.0)
            if spent > 0:
                by[comm] = by.get(comm, 0.0) + spent
        self.by_program = {k: round(v, 3) for k, v in
                           sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.02}
        return self
