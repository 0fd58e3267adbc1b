"""System domain: liveness and dead letters."""
from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .envelope import Command, Event


class Ping(Command):
    """Sent to ``system.cmd.ping.<service>``; each running service answers."""

    subject: ClassVar[str] = "system.cmd.ping.{service}"


class Pong(BaseModel):
    model_config = ConfigDict(extra="ignore")

    service: str
    instance: str
    started_at: datetime
    version: str


class DeadLettered(Event):
    """A message that failed ``deliveries`` times; kept with the error for an operator."""

    subject: ClassVar[str] = "deadletter.{stream}.{consumer}"
    stream: str
    consumer: str
    original_subject: str
    original_event_id: str | None = None
    deliveries: int
    error_type: str
    error: str
    payload: str
    headers: dict[str, str] = {}
