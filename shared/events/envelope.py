"""The envelope every message on the bus carries.

Each event or command is a pydantic model deriving from :class:`Event` or
:class:`Command`.  Producers and consumers import the same class; consumers ignore
fields they do not know (``extra="ignore"``), so a producer may add fields without
breaking older consumers.  ``subject`` is where the message travels.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)

    subject: ClassVar[str] = ""
    #: bumped when a field changes meaning; consumers may branch on it
    schema_version: int = 1
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    #: W3C trace context (``traceparent``/``tracestate``) of the step that produced it
    trace: dict[str, str] = Field(default_factory=dict)


class Event(Message):
    """A fact, named in the past tense (``build.succeeded``); travels on JetStream."""


class Command(Message):
    """An imperative request (``<domain>.cmd.<verb>``); travels by request/reply."""


class ErrorInfo(BaseModel):
    """What went wrong, said so that a person can act on it."""

    model_config = ConfigDict(extra="ignore")

    code: str
    message: str
    hint: str | None = None
    #: which input field the error is about, for forms that show it beside the field
    field: str | None = None
    details: dict[str, object] = Field(default_factory=dict)


class Reply(BaseModel):
    """The answer to a command: either ``ok`` with a result, or an error."""

    model_config = ConfigDict(extra="ignore")

    ok: bool
    error: ErrorInfo | None = None
