"""Why a build attempt failed, said so that a developer can act on it."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from labfleet.shared.events.envelope import ErrorInfo

#: lines of the log kept with a failure
TAIL_LINES = 30
#: what compilers, linkers and make print about the failure, most telling first
_CULPRITS = (
    re.compile(r"\b(fatal )?error:", re.IGNORECASE),
    re.compile(r"undefined reference|No rule to make target|not found"),
    re.compile(r"\*\*\* .*Error \d+|\bfatal\b", re.IGNORECASE),
)
#: lines the builder itself writes into the log
NOTE_PREFIX = "[labfleet]"
#: what the kernel configure step prints, and exits with, for an option Kconfig dropped
DROPPED_PREFIX = "labfleet: option not applied:"
OPTIONS_DROPPED = 3


@dataclass
class BuildError(Exception):
    code: str
    message: str
    hint: str | None = None
    #: True when another attempt (on another server) may succeed: the server was lost
    retryable: bool = False
    details: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, hint=self.hint,
                         details=self.details)


def first_error_line(lines: Sequence[str]) -> str | None:
    """The compiler's own message: the first line of the tail that reports an error."""
    output = [line for line in lines if not line.startswith(NOTE_PREFIX)]
    for culprit in _CULPRITS:
        for line in output:
            if culprit.search(line):
                return line.strip()
    return None


def step_failed(step: str, exit_status: int | None, tail: Sequence[str]) -> BuildError:
    tail = list(tail)[-TAIL_LINES:]
    details: dict[str, object] = {"exit_status": exit_status, "log_tail": tail}
    status = "was killed" if exit_status is None else f"exited with status {exit_status}"
    output = [line for line in tail if not line.startswith(NOTE_PREFIX) and line.strip()]
    culprit = first_error_line(tail) or (output[-1].strip() if output else "")
    suffix = f": {culprit}" if culprit else ""
    if step == "fetch":
        return BuildError("fetch_failed", f"fetching the repository failed ({status}){suffix}",
                          hint="check the repository URL and that the build server can reach "
                               "it", details=details)
    if step == "checkout":
        return BuildError("checkout_failed", f"checking out the commit failed ({status})"
                          f"{suffix}", details=details)
    if step == "configure":
        dropped = [line.split(DROPPED_PREFIX, 1)[1].strip() for line in tail
                   if DROPPED_PREFIX in line]
        if exit_status == OPTIONS_DROPPED and dropped:
            return BuildError("config_option_dropped",
                              "kernel options were not applied: " + "; ".join(dropped),
                              hint="Kconfig drops an option whose dependencies are off: add "
                                   "them to the fragment, or remove the option",
                              details={**details, "dropped": dropped})
        return BuildError("configure_failed", f"configuring failed ({status}){suffix}",
                          hint="check the config target and fragments", details=details)
    if step == "collect":
        return BuildError("collect_failed", f"collecting the build's outputs failed "
                          f"({status}){suffix}", hint="the log shows which output is missing",
                          details=details)
    if step == "tuxmake":
        return BuildError("tuxmake_failed", f"tuxmake {status}{suffix}",
                          hint="tuxmake's own log (build.log in its output) and the log tail "
                               "show the cause", details=details)
    return BuildError("compile_failed", f"make {status}{suffix}",
                      hint="the log tail shows the compiler's messages", details=details)
