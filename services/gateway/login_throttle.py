"""How often a password may be guessed: failed log-ins are counted per user name and per
client address within a window; past the allowance each further failure doubles the
time until the next try is accepted (30 s, 1 min, 2 min … capped at the window).

The count lives in the gateway process: each replica throttles on its own, which bounds a
guesser by the replicas' sum.  The address allowance is larger than the user one, since
many people may share an address (a lab behind NAT), and a guesser who sprays many names
from one address is stopped by it.  A successful log-in clears its user's count, not the
address's.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: the most keys kept; the oldest go first (a flood of made-up names cannot fill memory)
MAX_TRACKED = 10_000


@dataclass
class LoginThrottle:
    failures_per_user: int = 5
    failures_per_address: int = 20
    window_s: float = 900.0
    first_lockout_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a log-in of ``username`` from ``address`` is tried again; 0 now."""
        now = self.clock()
        return max(self._wait(f"user:{username.lower()}", self.failures_per_user, now),
                   self._wait(f"addr:{address}", self.failures_per_address, now))

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        for key in (f"user:{username.lower()}", f"addr:{address}"):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # re-inserted: the dict's order is by last failure
        while len(self._failures) > MAX_TRACKED:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, username: str) -> None:
        self._failures.pop(f"user:{username.lower()}", None)

    def clear(self) -> None:
        self._failures.clear()

    def _wait(self, key: str, allowed: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < allowed:
            return 0.0
        lockout = min(self.first_lockout_s * 2.0 ** (len(times) - allowed), self.window_s)
        return max(0.0, times[-1] + lockout - now)
