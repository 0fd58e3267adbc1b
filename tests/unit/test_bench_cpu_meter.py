"""The benchmarks' CPU meter counts the CPU programs spend, in all and per program."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench._stack import CpuMeter  # noqa: E402

BURN = """
import sys, time
with open("/proc/self/comm", "w") as f:
    f.write("cpuburner")
t = time.process_time()
while time.process_time() - t < 0.4:
    pass
print("burnt", flush=True)
time.sleep(60)
"""


def test_a_busy_program_is_counted_under_its_name_and_in_all() -> None:
    meter = CpuMeter().start()
    burner = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert burner.stdout is not None and burner.stdout.readline() == "burnt\n"
        meter.stop()  # while it still runs: its own time, under the name it gave itself
    finally:
        burner.kill()
        burner.wait()
    assert meter.by_program.get("cpuburner", 0.0) >= 0.35, meter.by_program
    assert meter.cpu_s >= 0.35
    assert meter.cpu_s < 60  # seconds, not clock ticks


def test_a_reaped_child_is_counted_under_its_parent() -> None:
    meter = CpuMeter().start()
    subprocess.run([sys.executable, "-c", BURN.replace("time.sleep(60)", "")], check=True,
                   stdout=subprocess.DEVNULL)
    meter.stop()
    # gone before the meter stopped: its time is in this process's children's time
    mine = Path("/proc/self/comm").read_text().strip()
    assert meter.by_program.get(mine, 0.0) >= 0.35, meter.by_program
    assert "cpuburner" not in meter.by_program


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
