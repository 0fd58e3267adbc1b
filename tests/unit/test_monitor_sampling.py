"""The poll script and the reading of its output.

The script is run here by the real ``sh`` on this machine (it is Linux, like the hosts),
which is exactly what a host does with it; nothing is faked.
"""
from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labfleet.monitor.domain.sampling import (
    POLL_SCRIPT,
    CpuTimes,
    UnreadablePoll,
    cpu_percent,
    parse_poll_output,
    poll_argv,
    to_sample,
)
from labfleet.shared.events.resource import ResourceKind

OUTPUT = """@stat
cpu  100 0 50 800 50 0 0 0 0 0
@meminfo
MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    6000000 kB
@loadavg
1.50 0.75 0.30 2/300 12345
@nproc
4
@df
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/sda1         10485760  5242880   4194304      56% /
@procs
3
"""


def run_poll(work_dir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(poll_argv(work_dir), capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_script_reads_this_linux_machine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = run_poll(str(tmp_path))
    assert done.returncode == 0, done.stderr
    reading = parse_poll_output(done.stdout)
    assert reading.cpu_cores >= 1 and reading.mem_total_kb > reading.mem_available_kb > 0
    assert reading.disk_total_bytes > reading.disk_free_bytes > 0
    assert reading.cpu.total > reading.cpu.idle > 0 and reading.compile_procs >= 0


def test_work_dir_is_data_never_shell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    hostile = f"/nonexistent; touch {marker}; $(touch {marker})"
    argv = poll_argv(hostile)
    assert argv[2] == POLL_SCRIPT  # the script never changes with host data
    done = run_poll(hostile)
    assert not marker.exists()
    assert done.returncode == 0
    parse_poll_output(done.stdout)  # falls back to the home directory's disk


def test_parse_and_sample() -> None:
    reading = parse_poll_output(OUTPUT)
    assert reading.cpu == CpuTimes(total=1000, idle=850)
    assert reading.load1 == 1.5 and reading.cpu_cores == 4 and reading.compile_procs == 3
    rid = uuid.uuid4()
    first = to_sample(rid, ResourceKind.BUILD_SERVER, datetime.now(UTC), reading, None)
    assert first.cpu_pct == 15.0  # since boot: 150 busy of 1000
    assert first.mem_total_mb == 8000000 // 1024
    assert first.mem_used_mb == 2000000 // 1024
    assert first.disk_total_gb == 10.0 and first.disk_free_gb == 4.0
    later = to_sample(rid, ResourceKind.BUILD_SERVER, datetime.now(UTC), reading,
                      CpuTimes(total=900, idle=800))
    assert later.cpu_pct == 50.0  # 50 busy of the last 100


def test_meminfo_without_memavailable() -> None:
    old_kernel = OUTPUT.replace("MemAvailable:    6000000 kB\n",
                                "Buffers:          500000 kB\nCached:          1500000 kB\n")
    assert parse_poll_output(old_kernel).mem_available_kb == 3000000


@pytest.mark.parametrize("broken", [
    OUTPUT.replace("@procs\n3\n", ""),
    OUTPUT.replace("cpu  100", "intr 100"),
    OUTPUT.replace("MemTotal", "Memtotal"),
    OUTPUT.replace("4\n@df", "four\n@df"),
    "sh: 1: cannot open /proc/stat\n",
])
def test_unreadable_output_is_an_error_not_a_number(broken: str) -> None:
    with pytest.raises(UnreadablePoll):
        parse_poll_output(broken)


jiffies = st.integers(min_value=0, max_value=10**12)


@given(total=jiffies, idle=jiffies, d_total=jiffies, d_idle=jiffies)
def test_cpu_percent_is_a_percentage(total: int, idle: int, d_total: int, d_idle: int) -> None:
    idle = min(idle, total)
    d_idle = min(d_idle, d_total)
    previous = CpuTimes(total, idle)
    current = CpuTimes(total + d_total, idle + d_idle)
    pct = cpu_percent(previous, current)
    assert 0.0 <= pct <= 100.0
    if d_total:
        assert pct == pytest.approx(100.0 * (d_total - d_idle) / d_total, abs=0.051)


def test_counters_going_back_mean_a_reboot() -> None:
    assert cpu_percent(CpuTimes(10**9, 10**8), CpuTimes(1000, 500)) == 50.0
