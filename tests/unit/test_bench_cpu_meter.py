"""The benchmarks' CPU meter counts the CPU programs spend, in all and per program."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench._stack import CpuMeter  # noqa: E402

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"


def test_a_reaped_child_is_counted_under_its_parent_and_in_all() -> None:
    meter = CpuMeter().start()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    meter.stop()
    # the child has been reaped: its time is in its parent's (a Python too) children's time
    name = Path(sys.executable).name[:15]
    assert meter.by_program.get(name, 0.0) >= 0.35, meter.by_program
    assert meter.cpu_s >= 0.35
    assert meter.cpu_s < 60  # seconds, not clock ticks


def test_an_idle_stretch_costs_next_to_nothing() -> None:
    meter = CpuMeter().start()
    subprocess.run(["sleep", "0.3"], check=True)
    meter.stop()
    assert meter.by_program.get("sleep", 0.0) < 0.02
    assert all(v >= 0.02 for v in meter.by_program.values())


def test_a_process_is_known_by_its_pid_and_start_and_kernel_workers_together() -> None:
    procs = CpuMeter.processes()
    mine = [v for (pid, _), v in procs.items() if pid == os.getpid()]
    assert len(mine) == 1 and mine[0][1] > 0
    assert not any(name.startswith("kworker/") for name, _ in procs.values())
