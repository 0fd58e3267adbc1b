"""How long builds take and when a queued one will start, from the build history.

Estimates are honest about ignorance: with no comparable past build the answer is
``None`` ("unknown"), never a made-up number.
"""
from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence

#: how many recent comparable builds an estimate looks at
RECENT = 5


def typical_duration(durations: Sequence[float]) -> float | None:
    """Median of the most recent durations (newest first); None without history."""
    recent = [d for d in durations[:RECENT] if d >= 0]
    return statistics.median(recent) if recent else None


def remaining(duration: float | None, elapsed_s: float) -> float | None:
    """Time left of a running build expected to take ``duration``; overruns count as 0."""
    if duration is None:
        return None
    return max(0.0, duration - elapsed_s)


def estimated_start(slots_free_in: Sequence[float | None],
                    ahead: Sequence[float | None]) -> float | None:
    """Seconds until a build waiting behind ``ahead`` gets a slot.

    ``slots_free_in`` has one entry per slot of the servers that can take the build:
    0 for a free slot, the expected remaining time of the build in it otherwise.  Each
    build ahead takes the earliest slot for its expected duration (first come, first
    served).  Any unknown on the way makes the answer unknown.
    """
    if not slots_free_in or any(t is None for t in slots_free_in):
        return None
    free_at: list[float] = [float(t) for t in slots_free_in if t is not None]
    heapq.heapify(free_at)
    for duration in ahead:
        if duration is None:
            return None
        t = heapq.heappop(free_at)
        heapq.heappush(free_at, t + duration)
    return free_at[0]
