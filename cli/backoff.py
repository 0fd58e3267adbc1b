"""How long the supervisor waits before restarting a crashed service.

Doubling delays keep a service that fails at start (a bad migration, a missing setting)
from spinning the CPU, while one that crashed after running a while comes back at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestartBackoff:
    initial_s: float = 1.0
    max_s: float = 30.0
    #: a run at least this long counts as healthy: the next crash starts over at initial_s
    stable_after_s: float = 30.0
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("back-off needs 0 < initial_s <= max_s")
        self._next_s = self.initial_s

    def delay_after(self, uptime_s: float) -> float:
        """The wait before the next start, given how long the crashed run lasted."""
        if uptime_s >= self.stable_after_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay
