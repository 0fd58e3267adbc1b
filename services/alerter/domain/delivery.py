"""Delivery policy: when a failed delivery is tried again, and when it is given up."""
from __future__ import annotations

from collections.abc import Sequence


def retry_delay(attempts: int, schedule: Sequence[float]) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
    if not schedule:
        return 60.0
    return float(schedule[min(max(attempts, 1) - 1, len(schedule) - 1)])


def gives_up(attempts: int, max_attempts: int) -> bool:
    return attempts >= max_attempts
