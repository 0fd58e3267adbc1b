"""A build job's states and attempts, and what to do when an allocation arrives.

States move ``queued → allocated → running → succeeded | failed | cancelled``; a lost
server sends a running build back to ``queued`` for the scheduler to place again.
:func:`transition` refuses any other move.

Attempts are numbered per build.  Each belongs to one allocation (the scheduler's
``attempt``); a crash of the builder is survived inside one allocation by running the
next attempt after killing the last (:func:`plan_allocation`).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from labfleet.shared.events.build import BuildStatus
from labfleet.shared.events.envelope import ErrorInfo

TERMINAL = frozenset({BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED})

_ALLOWED: dict[BuildStatus, frozenset[BuildStatus]] = {
    BuildStatus.QUEUED: frozenset({BuildStatus.ALLOCATED, BuildStatus.RUNNING,
                                   BuildStatus.FAILED, BuildStatus.CANCELLED}),
    BuildStatus.ALLOCATED: frozenset({BuildStatus.ALLOCATED, BuildStatus.RUNNING,
                                      BuildStatus.QUEUED, BuildStatus.FAILED,
                                      BuildStatus.CANCELLED}),
    BuildStatus.RUNNING: frozenset({BuildStatus.RUNNING, BuildStatus.ALLOCATED,
                                    BuildStatus.QUEUED, BuildStatus.SUCCEEDED,
                                    BuildStatus.FAILED, BuildStatus.CANCELLED}),
    BuildStatus.SUCCEEDED: frozenset(),
    BuildStatus.FAILED: frozenset(),
    BuildStatus.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, current: BuildStatus, new: BuildStatus) -> None:
        super().__init__(f"a build cannot go from {current} to {new}")
        self.current, self.new = current, new


def transition(current: BuildStatus, new: BuildStatus) -> BuildStatus:
    if new not in _ALLOWED[current]:
        raise InvalidTransition(current, new)
    return new


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: the server was lost; the scheduler places the build again
    LOST = "lost"
    #: the builder died during it; its remote processes were killed
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    #: the scheduler moved the build elsewhere meanwhile
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Attempt:
    attempt: int
    allocation: int
    server_id: uuid.UUID
    server_name: str
    started_at: datetime
    #: the build directory on the server, known once the attempt got that far
    build_dir: str | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: ErrorInfo | None = None
    instance: str = ""

    @property
    def in_progress(self) -> bool:
        return self.outcome is None


@dataclass(frozen=True)
class Job:
    build_id: uuid.UUID
    status: BuildStatus
    allocation: int = 0
    attempts: tuple[Attempt, ...] = ()
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


class Action(StrEnum):
    RUN = "run"
    #: an attempt is recorded as in progress but nobody runs it: kill it, run the next
    RECOVER = "recover"
    CANCEL = "cancel"
    GIVE_UP = "give_up"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Plan:
    action: Action
    #: the number of the attempt to run (RUN, RECOVER)
    attempt: int = 0
    #: the attempt to kill first (RECOVER, CANCEL, GIVE_UP), if one is in progress
    previous: Attempt | None = None
    reason: str = ""


def plan_allocation(job: Job, allocation: int, *, running_here: bool,
                    max_attempts: int) -> Plan:
    """Decide what a (possibly redelivered) ``build.allocated`` means now."""
    if job.terminal:
        return Plan(Action.IGNORE, reason=f"the build is already {job.status}")
    if allocation < job.allocation:
        return Plan(Action.IGNORE, reason=f"allocation {allocation} was replaced by "
                                          f"{job.allocation}")
    current = job.current
    previous = current if current is not None and current.in_progress else None
    if running_here and previous is not None and previous.allocation == allocation:
        return Plan(Action.IGNORE, reason="this process is running it")
    if job.cancel_requested:
        return Plan(Action.CANCEL, previous=previous, reason="cancel requested")
    tried = [a for a in job.attempts if a.allocation == allocation]
    if len(tried) >= max_attempts:
        return Plan(Action.GIVE_UP, previous=previous,
                    reason=f"the build was interrupted {len(tried)} times on this server "
                           f"(bound {max_attempts})")
    number = len(job.attempts) + 1
    if previous is not None:
        why = ("the builder stopped during attempt "
               f"{previous.attempt}" if previous.allocation == allocation else
               f"attempt {previous.attempt} belongs to an older allocation")
        return Plan(Action.RECOVER, attempt=number, previous=previous, reason=why)
    return Plan(Action.RUN, attempt=number)
