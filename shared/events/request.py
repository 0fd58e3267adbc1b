"""Scheduling domain: queue positions and decisions (owner: scheduler)."""
from __future__ import annotations

import uuid
from typing import ClassVar

from .envelope import Event


class RequestQueued(Event):
    subject: ClassVar[str] = "request.queued"
    request_id: uuid.UUID
    kind: str  # "build" | "env"
    position: int
    estimated_start_s: float | None = None
    reason: str = ""


class PolicyDecided(Event):
    """Why the scheduler placed a request where it did (the decision log, as an event)."""

    subject: ClassVar[str] = "policy.decided"
    request_id: uuid.UUID
    kind: str
    chosen: str | None
    candidates: list[dict[str, object]] = []
    reason: str = ""
