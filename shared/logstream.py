"""Numbered text chunks on ``log.<kind>.<id>`` (stream LOGS): build logs, consoles.

One writer and one reader for every log labfleet keeps.  Chunks are published as they are
read, without the outbox: a log is high volume, and a chunk published twice is dropped by
its ``Nats-Msg-Id``.  ``seq`` goes on from the last chunk in the stream, so a service
restarted mid-way continues the numbering.  The last chunk of a run (a build's outcome,
a deployment's end) has ``eof=True``.
"""
from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from pydantic import BaseModel, ValidationError

STREAM = "LOGS"


C = TypeVar("C", bound=BaseModel)

#: builds the chunk model from (seq, text, eof)
MakeChunk = Callable[[int, str, bool], BaseModel]


class ChunkWriter:
    """Writes one log's chunks; ``make`` turns (seq, text, eof) into the chunk model."""

    def __init__(self, js: Any, subject: str, model: type[BaseModel], make: MakeChunk,
                 msg_id_prefix: str) -> None:
        self.js = js
        self.subject = subject
        self.model = model
        self._make = make
        self._msg_id_prefix = msg_id_prefix
        self.seq = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def open(self) -> ChunkWriter:
        try:
            last = await self.js.get_last_msg(STREAM, self.subject)
            self.seq = self.model.model_validate_json(last.data).seq  # type: ignore[attr-defined]
        except nats.js.errors.NotFoundError:
            self.seq = 0
        return self

    async def write_bytes(self, data: bytes) -> str:
        """Decodes (UTF-8, a character split across reads is kept for the next one),
        publishes and returns the text."""
        text = self._decoder.decode(data)
        await self.write(text)
        return text

    async def write(self, text: str, *, eof: bool = False) -> None:
        if not text and not eof:
            return
        self.written(text)
        self.seq += 1
        chunk = self._make(self.seq, text, eof)
        await self.js.publish(self.subject, chunk.model_dump_json().encode(),
                              headers={"Nats-Msg-Id": f"{self._msg_id_prefix}-{self.seq}"})

    def written(self, text: str) -> None:
        """Called with each chunk's text before it is published (for a writer's tail)."""


async def read_chunks(js: Any, subject: str, model: type[C], *, follow: bool,
                      idle_timeout: float = 2.0,
                      follow_timeout: float = 3600.0) -> AsyncIterator[C]:
    """A log's chunks from the first one on.

    Without ``follow``: what is stored now (stops when nothing more is pending).  With
    ``follow``: waits for new chunks until the newest stored one has ``eof=True`` (or
    ``follow_timeout`` passes without a chunk).  Chunks that do not parse are skipped.
    """
    from nats.js.api import DeliverPolicy

    if not follow:
        # an empty log has nothing pending: ask the stream before waiting on it
        try:
            await js.get_last_msg(STREAM, subject)
        except nats.js.errors.NotFoundError:
            return
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=follow_timeout if follow else idle_timeout)
            except nats.errors.TimeoutError:
                return
            try:
                chunk = model.model_validate_json(msg.data)
            except ValidationError:
                continue
            yield chunk
            caught_up = msg.metadata.num_pending == 0
            if caught_up and (not follow or getattr(chunk, "eof", False)):
                return
    finally:
        await sub.unsubscribe()
