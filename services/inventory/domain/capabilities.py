"""Turn what a build server printed into its capabilities (pure parsing, no I/O).

The probe (``adapters/detection.py``) runs ``nproc``, ``uname -m``, reads
``/proc/cpuinfo`` and ``/proc/meminfo``, ``df -Pk <work dir>`` and ``<tool> --version``;
this module reads those outputs.  Anything unreadable raises :class:`UnreadableOutput`
naming the command, so a strange host gives a specific error instead of a wrong number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from labfleet.shared.events.resource import BuildServerCapabilities

from .toolchains import toolchains_found

#: tools a kernel build needs besides the compiler, reported with their version line
BUILD_TOOLS: tuple[str, ...] = ("make", "git", "flex", "bison", "bc")

# /proc/cpuinfo names the processor differently per architecture
_CPU_MODEL_KEYS = ("model name", "Model", "cpu model", "uarch", "Hardware", "isa")

_DF_LINE = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(\S.*)$")

GIB = 1024**3


class UnreadableOutput(ValueError):
    def __init__(self, command: str, output: str) -> None:
        super().__init__(f"could not read the output of `{command}`: {output.strip()[:200]!r}")
        self.command = command


@dataclass
class HostFacts:
    """Raw outputs of the probe's commands."""

    nproc: str
    machine: str
    cpuinfo: str
    meminfo: str
    df: str
    work_dir: str
    #: program name → its ``--version`` output; absent when the program did not answer
    versions: dict[str, str] = field(default_factory=dict)


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_cpu_model(cpuinfo: str) -> str:
    values: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            values.setdefault(key.strip(), value.strip())
    for key in _CPU_MODEL_KEYS:
        if key in values:
            return values[key]
    return ""


def parse_meminfo_kb(meminfo: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    free_bytes: int
    mount: str


def parse_df(output: str) -> DiskUsage:
    """The last line of ``df -P`` (block size from its header: ``1024-blocks`` or ``512-blocks``)."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise UnreadableOutput("df -Pk", output)
    header = lines[0].split()
    block = 1024
    if len(header) > 1 and header[1].endswith("-blocks") and header[1].split("-")[0].isdigit():
        block = int(header[1].split("-")[0])
    m = _DF_LINE.search(" " + lines[-1])
    if not m:
        raise UnreadableOutput("df -Pk", output)
    total, _used, avail = (int(m.group(i)) for i in (1, 2, 3))
    return DiskUsage(total_bytes=total * block, free_bytes=avail * block, mount=m.group(5))


def build_capabilities(facts: HostFacts) -> BuildServerCapabilities:
    nproc = facts.nproc.strip()
    if not nproc.isdigit() or int(nproc) < 1:
        raise UnreadableOutput("nproc", facts.nproc)
    mem = parse_meminfo_kb(facts.meminfo)
    if "MemTotal" not in mem:
        raise UnreadableOutput("cat /proc/meminfo", facts.meminfo)
    disk = parse_df(facts.df)
    machine = facts.machine.strip()
    versions = {name: first_line(text) for name, text in facts.versions.items() if first_line(text)}
    return BuildServerCapabilities(
        cpu_cores=int(nproc),
        cpu_model=parse_cpu_model(facts.cpuinfo),
        machine=machine,
        memory_mb=mem["MemTotal"] // 1024,
        disk_total_gb=round(disk.total_bytes / GIB, 2),
        disk_free_gb=round(disk.free_bytes / GIB, 2),
        work_dir=facts.work_dir.strip(),
        toolchains=toolchains_found(machine, versions),
        tools={tool: versions[tool] for tool in BUILD_TOOLS if tool in versions},
    )
