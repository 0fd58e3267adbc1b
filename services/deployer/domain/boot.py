"""Reading a serial console for the verdict on a boot: a pure, incremental judge.

Feed it console text as it arrives; it answers once the boot is proven (the marker or a
login prompt) or has failed (panic, Oops, the machine resetting again and again).  A
timeout is the caller's to call, since only it knows the clock.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from labfleet.shared.events.deploy import BootFailure

LOGIN_PROMPT = re.compile(r"(?m)^[\w.-]* ?login: ?$")
PANIC = re.compile(r"Kernel panic - not syncing[^\n]*|Kernel panic[^\n]*")
OOPS = re.compile(r"Internal error: Oops[^\n]*|\bOops(?:: | -)[^\n]*|BUG: unable to handle[^\n]*")
#: printed once per kernel start; seen again means the machine reset
KERNEL_START = re.compile(r"Linux version \d")
#: starts of the kernel that make a reset loop (two resets: the third start)
RESET_LOOP_STARTS = 3

#: how much console text is kept around a failure for the report
EXCERPT_LINES = 40


class Verdict(StrEnum):
    BOOTED = "booted"
    FAILED = "failed"


@dataclass(frozen=True)
class BootResult:
    verdict: Verdict
    #: the line that decided it
    line: str
    failure: BootFailure | None = None


@dataclass
class BootJudge:
    marker: str
    text: str = ""
    result: BootResult | None = None
    _scanned: int = field(default=0, repr=False)

    def feed(self, chunk: str) -> BootResult | None:
        if self.result is not None:
            return self.result
        self.text += chunk.replace("\r\n", "\n").replace("\r", "\n")
        # look again a little before the new text: a line may have been split
        start = max(0, self._scanned - len(self.marker) - 200)
        window = self.text[start:]
        self._scanned = len(self.text)
        found: list[tuple[int, BootResult]] = []
        pos = window.find(self.marker)
        if pos >= 0:
            found.append((pos, BootResult(Verdict.BOOTED, _line_at(window, pos))))
        m = LOGIN_PROMPT.search(window)
        if m:
            found.append((m.start(), BootResult(Verdict.BOOTED, m.group(0).strip())))
        m = PANIC.search(window)
        if m:
            found.append((m.start(), BootResult(Verdict.FAILED, m.group(0).strip(),
                                                BootFailure.PANIC)))
        m = OOPS.search(window)
        if m:
            found.append((m.start(), BootResult(Verdict.FAILED, m.group(0).strip(),
                                                BootFailure.OOPS)))
        starts = list(KERNEL_START.finditer(self.text))
        if len(starts) >= RESET_LOOP_STARTS:
            found.append((len(window), BootResult(
                Verdict.FAILED, f"the kernel started {len(starts)} times (the machine keeps "
                "resetting)", BootFailure.RESET_LOOP)))
        if found:
            # the earliest event on the console decides (an Oops before a panic is an Oops)
            self.result = min(found, key=lambda f: f[0])[1]
        return self.result

    def excerpt(self, lines: int = EXCERPT_LINES) -> str:
        """The console lines up to and around the deciding line (the whole tail otherwise)."""
        all_lines = self.text.splitlines()
        if self.result is not None:
            for i in range(len(all_lines) - 1, -1, -1):
                if self.result.line and self.result.line[:40] in all_lines[i]:
                    return "\n".join(all_lines[max(0, i - lines + 10):i + 10])
        return "\n".join(all_lines[-lines:])


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)].strip()
