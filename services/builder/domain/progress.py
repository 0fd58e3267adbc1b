"""Compile progress, estimated from the last build of the same tree, config and arch.

make prints about one line per object it builds (``  CC      kernel/fork.o``), so the
count of output lines against the count the previous build printed is a good measure of
the work done, whatever the server's speed.  Without a line count the elapsed time
against the previous compile's duration stands in; with no history there is no estimate.
Updates go out at most every ``interval_s`` (and only when the figure moved), so a fast
make does not flood the bus.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from labfleet.shared.events.build import BuildSpec

#: never report 100 % before the compile step has really ended
CEILING = 99.0


def history_key(spec: BuildSpec) -> str:
    """Builds that compile the same thing: repository, config, fragments, arch, backend."""
    ident = json.dumps([spec.repo_url, spec.config, spec.config_fragments, spec.config_options,
                        spec.arch.value, spec.make_targets, spec.build_kind.value,
                        spec.backend.value])
    return hashlib.sha256(ident.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class CompileHistory:
    """What the previous compile of the same key printed and took."""

    lines: int
    seconds: float
    build_id: str = ""
    server: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"lines": self.lines, "seconds": self.seconds,
                           "build_id": self.build_id, "server": self.server}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CompileHistory | None:
        try:
            d = json.loads(data)
            return cls(lines=int(d["lines"]), seconds=float(d["seconds"]),
                       build_id=str(d.get("build_id", "")), server=str(d.get("server", "")))
        except (ValueError, KeyError, TypeError):
            return None


def estimate(history: CompileHistory | None, lines: int, elapsed_s: float) -> float | None:
    """Percent of the compile done, or None when nothing is known to compare with."""
    if history is None:
        return None
    if history.lines > 0:
        done = 100.0 * lines / history.lines
    elif history.seconds > 0:
        done = 100.0 * elapsed_s / history.seconds
    else:
        return None
    return round(min(CEILING, max(0.0, done)), 1)


@dataclass
class Throttle:
    """Lets a progress figure through at most once per interval, and only when it moved."""

    interval_s: float = 2.0
    last_at: float | None = None
    last_value: float | None = None

    def due(self, now: float, value: float | None) -> bool:
        if value is None or value == self.last_value:
            return False
        if self.last_at is not None and now - self.last_at < self.interval_s:
            return False
        self.last_at, self.last_value = now, value
        return True
