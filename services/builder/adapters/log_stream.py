"""A build's log on ``log.build.<build_id>`` (stream LOGS), in numbered chunks.

Chunks are published as they are read (no outbox: the log is high volume and a chunk
published twice is dropped by its ``Nats-Msg-Id``).  ``seq`` goes on from the last chunk
in the stream, so a builder restarted mid-build continues the numbering.
"""
from __future__ import annotations

import codecs
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import NotFoundError

from labfleet.shared.events.build import LogChunk

from ..domain.errors import NOTE_PREFIX

STREAM = "LOGS"


def log_subject(build_id: uuid.UUID) -> str:
    return f"log.build.{build_id}"


class BuildLog:
    def __init__(self, js: Any, build_id: uuid.UUID, attempt: int, keep_lines: int = 200) -> None:
        self.js = js
        self.build_id = build_id
        self.attempt = attempt
        self.subject = log_subject(build_id)
        self.seq = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        #: the attempt's last lines, for error messages
        self.tail: deque[str] = deque(maxlen=keep_lines)

    async def open(self) -> BuildLog:
        try:
            last = await self.js.get_last_msg(STREAM, self.subject)
            self.seq = LogChunk.model_validate_json(last.data).seq
        except NotFoundError:
            self.seq = 0
        return self

    async def write_bytes(self, data: bytes) -> None:
        await self.write(self._decoder.decode(data))

    async def note(self, line: str) -> None:
        """A line of the builder's own (phase headers, outcomes)."""
        await self.write(f"{NOTE_PREFIX} {line}\n")

    async def write(self, text: str, *, eof: bool = False) -> None:
        if not text and not eof:
            return
        self._remember(text)
        self.seq += 1
        chunk = LogChunk(build_id=self.build_id, seq=self.seq, at=datetime.now(UTC), text=text,
                         attempt=self.attempt, eof=eof)
        await self.js.publish(self.subject, chunk.model_dump_json().encode(),
                              headers={"Nats-Msg-Id": f"log-{self.build_id}-{self.seq}"})

    async def close(self, last_line: str) -> None:
        await self.write(f"{NOTE_PREFIX} {last_line}\n", eof=True)

    def _remember(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self.tail.extend(lines)

    def last_lines(self) -> list[str]:
        return [*self.tail, *([self._partial] if self._partial else [])]
