"""Build history figures for a server's page and a build's page (pure)."""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from labfleet.shared.events.build import BuildStatus, BuildView
from labfleet.shared.events.health import HostSample


def duration_s(build: BuildView) -> float | None:
    if build.started_at is None or build.finished_at is None:
        return None
    return round((build.finished_at - build.started_at).total_seconds(), 3)


@dataclass(frozen=True)
class AverageBuildTime:
    arch: str
    config: str
    builds: int
    mean_s: float
    last_s: float


def average_build_times(builds: Iterable[BuildView]) -> list[AverageBuildTime]:
    """Mean duration of succeeded builds per (architecture, config); newest-first input."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for b in builds:
        took = duration_s(b)
        if b.status == BuildStatus.SUCCEEDED and took is not None:
            groups[(b.spec.arch.value, b.spec.config or "(plain make)")].append(took)
    return [AverageBuildTime(arch, config, len(times), round(statistics.fmean(times), 1),
                             round(times[0], 1))
            for (arch, config), times in sorted(groups.items())]


@dataclass(frozen=True)
class Usage:
    samples: int
    cpu_pct_mean: float | None = None
    cpu_pct_max: float | None = None
    load1_max: float | None = None
    mem_used_mb_max: int | None = None
    mem_total_mb: int | None = None
    compile_procs_max: int | None = None


def usage_during(samples: list[HostSample]) -> Usage:
    if not samples:
        return Usage(samples=0)
    return Usage(
        samples=len(samples),
        cpu_pct_mean=round(statistics.fmean(s.cpu_pct for s in samples), 1),
        cpu_pct_max=round(max(s.cpu_pct for s in samples), 1),
        load1_max=round(max(s.load1 for s in samples), 2),
        mem_used_mb_max=max(s.mem_used_mb for s in samples),
        mem_total_mb=samples[-1].mem_total_mb,
        compile_procs_max=max(s.compile_procs for s in samples))
