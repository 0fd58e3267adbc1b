"""What a page shows of a server or a build, computed from the API models (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from labfleet.shared.events.build import BuildPhase, BuildStatus
from labfleet.shared.events.health import HostSample

#: a rough share of a build's time per phase, for the progress bar when no percent is sent
PHASE_PROGRESS = {BuildPhase.FETCH: 5.0, BuildPhase.CONFIGURE: 15.0, BuildPhase.COMPILE: 30.0,
                  BuildPhase.COLLECT: 90.0, BuildPhase.UPLOAD: 95.0}


@dataclass(frozen=True)
class Usage:
    cpu_pct: float | None
    mem_pct: float | None
    disk_pct: float | None
    mem_text: str
    disk_text: str
    load1: float | None
    compile_procs: int | None
    at: datetime | None


def usage(sample: HostSample | None) -> Usage:
    if sample is None:
        return Usage(None, None, None, "–", "–", None, None, None)
    mem = 100.0 * sample.mem_used_mb / sample.mem_total_mb if sample.mem_total_mb else None
    used_disk = sample.disk_total_gb - sample.disk_free_gb
    disk = 100.0 * used_disk / sample.disk_total_gb if sample.disk_total_gb else None
    return Usage(
        cpu_pct=round(sample.cpu_pct, 1), mem_pct=None if mem is None else round(mem, 1),
        disk_pct=None if disk is None else round(disk, 1),
        mem_text=f"{sample.mem_used_mb / 1024:.1f} / {sample.mem_total_mb / 1024:.1f} GiB",
        disk_text=f"{sample.disk_free_gb:.1f} GiB free of {sample.disk_total_gb:.1f}",
        load1=sample.load1, compile_procs=sample.compile_procs, at=sample.at)


def build_progress(status: BuildStatus, phase: BuildPhase | None, percent: float | None = None
                   ) -> float:
    if status in (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED):
        return 100.0
    if percent is not None:
        return max(0.0, min(100.0, percent))
    if status == BuildStatus.QUEUED:
        return 0.0
    if phase is None:
        return 2.0
    return PHASE_PROGRESS.get(phase, 50.0)


@dataclass(frozen=True)
class Plot:
    width: int
    height: int
    cpu_points: str
    mem_points: str
    first: datetime | None
    last: datetime | None
    count: int


def history_plot(samples: list[HostSample], width: int = 640, height: int = 160) -> Plot:
    """Polyline points (SVG user units, 0–100 % mapped to the height) over time."""
    if not samples:
        return Plot(width, height, "", "", None, None, 0)
    ordered = sorted(samples, key=lambda s: s.at)
    t0 = ordered[0].at.timestamp()
    span = max(ordered[-1].at.timestamp() - t0, 1.0)

    def point(s: HostSample, value: float) -> str:
        x = (s.at.timestamp() - t0) / span * width
        y = height - max(0.0, min(100.0, value)) / 100.0 * height
        return f"{x:.1f},{y:.1f}"

    cpu = " ".join(point(s, s.cpu_pct) for s in ordered)
    mem = " ".join(point(s, 100.0 * s.mem_used_mb / s.mem_total_mb if s.mem_total_mb else 0.0)
                   for s in ordered)
    return Plot(width, height, cpu, mem, ordered[0].at, ordered[-1].at, len(ordered))
