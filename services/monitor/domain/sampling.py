"""What one poll asks a host, and how its answer becomes a :class:`HostSample`.

A poll is ONE remote command: ``sh -c POLL_SCRIPT labfleet-poll <work dir>``.  The
script is a constant — host data (the work directory) reaches it only as the positional
argument ``$1``, quoted by ``shlex.join`` — so nothing a host or an admin says is ever
parsed as shell.  Its output is sections introduced by ``@name`` lines; the simulated
hosts of the emulated lab answer the same script, so change both together.

CPU % is the share of non-idle jiffies between two polls (``/proc/stat``'s first line);
the first poll of a host has no previous reading and reports the average since boot.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from labfleet.shared.events.health import HostSample
from labfleet.shared.events.resource import ResourceKind

POLL_SCRIPT = r"""echo @stat; head -n 1 /proc/stat
echo @meminfo; cat /proc/meminfo
echo @loadavg; cat /proc/loadavg
echo @nproc; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
echo @df; df -Pk -- "${1:-.}" 2>/dev/null || df -Pk .
echo @procs; cat /proc/[0-9]*/comm 2>/dev/null | grep -c -x -E 'cc1|cc1plus|ld|ld\.bfd|ld\.gold|ld\.lld|make|gmake' || true
"""

#: ``$0`` of the script, so the poll is recognisable in the host's process list
POLL_NAME = "labfleet-poll"

GIB = 1024**3

_DF_LINE = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(\S.*)$")


def poll_argv(work_dir: str | None) -> list[str]:
    return ["sh", "-c", POLL_SCRIPT, POLL_NAME, work_dir or "."]


class UnreadablePoll(ValueError):
    """The host answered, but not with what the script prints (not Linux, or a broken /proc)."""


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies since boot: all of them, and those spent idle (idle + iowait)."""

    total: int
    idle: int


@dataclass(frozen=True)
class PollReading:
    cpu: CpuTimes
    load1: float
    cpu_cores: int
    mem_total_kb: int
    mem_available_kb: int
    disk_total_bytes: int
    disk_free_bytes: int
    compile_procs: int


def split_sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@") and line[1:].isalpha():
            current = sections.setdefault(line[1:], [])
        elif current is not None and line.strip():
            current.append(line)
    return sections


def _cpu_times(lines: list[str]) -> CpuTimes:
    fields = lines[0].split() if lines else []
    if len(fields) < 5 or fields[0] != "cpu":
        raise UnreadablePoll(f"/proc/stat: {lines[:1]!r}")
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    values = [int(v) for v in fields[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return CpuTimes(total=sum(values), idle=idle)


def _meminfo(lines: list[str]) -> tuple[int, int]:
    kb: dict[str, int] = {}
    for line in lines:
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and parts and parts[0].isdigit():
            kb[key.strip()] = int(parts[0])
    if "MemTotal" not in kb:
        raise UnreadablePoll("/proc/meminfo has no MemTotal")
    available = kb.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    return kb["MemTotal"], available


def _df(lines: list[str]) -> tuple[int, int]:
    if len(lines) < 2:
        raise UnreadablePoll(f"df printed {lines!r}")
    header = lines[0].split()
    block = 1024
    if len(header) > 1 and header[1].endswith("-blocks") and header[1].split("-")[0].isdigit():
        block = int(header[1].split("-")[0])
    m = _DF_LINE.search(" " + lines[-1])
    if not m:
        raise UnreadablePoll(f"df printed {lines[-1]!r}")
    return int(m.group(1)) * block, int(m.group(3)) * block


def _int(lines: list[str], what: str) -> int:
    if not lines or not lines[-1].strip().isdigit():
        raise UnreadablePoll(f"{what}: {lines!r}")
    return int(lines[-1].strip())


def parse_poll_output(output: str) -> PollReading:
    s = split_sections(output)
    missing = {"stat", "meminfo", "loadavg", "nproc", "df", "procs"} - s.keys()
    if missing:
        raise UnreadablePoll(f"sections missing from the poll output: {sorted(missing)}")
    mem_total, mem_available = _meminfo(s["meminfo"])
    disk_total, disk_free = _df(s["df"])
    try:
        load1 = float(s["loadavg"][0].split()[0])
    except (IndexError, ValueError):
        raise UnreadablePoll(f"/proc/loadavg: {s['loadavg']!r}") from None
    return PollReading(
        cpu=_cpu_times(s["stat"]), load1=load1, cpu_cores=_int(s["nproc"], "nproc"),
        mem_total_kb=mem_total, mem_available_kb=mem_available,
        disk_total_bytes=disk_total, disk_free_bytes=disk_free,
        compile_procs=_int(s["procs"], "process count"))


def cpu_percent(previous: CpuTimes | None, current: CpuTimes) -> float:
    """Busy share between two readings; since boot when there is no earlier one (or a reboot)."""
    if previous is None or current.total < previous.total:
        previous = CpuTimes(0, 0)
    total = current.total - previous.total
    if total <= 0:
        return 0.0
    busy = total - (current.idle - previous.idle)
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 1)


def to_sample(resource_id: uuid.UUID, kind: ResourceKind, at: datetime, reading: PollReading,
              previous: CpuTimes | None) -> HostSample:
    return HostSample(
        resource_id=resource_id, kind=kind, at=at,
        cpu_pct=cpu_percent(previous, reading.cpu), load1=reading.load1,
        cpu_cores=reading.cpu_cores,
        mem_total_mb=reading.mem_total_kb // 1024,
        mem_used_mb=max(0, reading.mem_total_kb - reading.mem_available_kb) // 1024,
        disk_total_gb=round(reading.disk_total_bytes / GIB, 2),
        disk_free_gb=round(reading.disk_free_bytes / GIB, 2),
        compile_procs=reading.compile_procs)
