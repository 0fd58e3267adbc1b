"""A build's log on ``log.build.<build_id>`` (stream LOGS), written with the shared
:class:`~labfleet.shared.logstream.ChunkWriter`; keeps the attempt's last lines for
error messages."""
from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime

from labfleet.shared.events.build import LogChunk, log_subject
from labfleet.shared.logstream import STREAM, ChunkWriter

from ..domain.errors import NOTE_PREFIX

__all__ = ["STREAM", "BuildLog", "log_subject"]


class BuildLog(ChunkWriter):
    def __init__(self, js: object, build_id: uuid.UUID, attempt: int, keep_lines: int = 200) -> None:
        super().__init__(
            js, log_subject(build_id), LogChunk,
            lambda seq, text, eof: LogChunk(build_id=build_id, seq=seq, at=datetime.now(UTC),
                                            text=text, attempt=attempt, eof=eof),
            f"log-{build_id}")
        self.build_id = build_id
        self.attempt = attempt
        self._partial = ""
        #: the attempt's last lines, for error messages
        self.tail: deque[str] = deque(maxlen=keep_lines)

    async def open(self) -> BuildLog:
        await super().open()
        return self

    async def write_bytes(self, data: bytes) -> str:
        return await super().write_bytes(data)

    async def note(self, line: str) -> None:
        """A line of the builder's own (phase headers, outcomes)."""
        await self.write(f"{NOTE_PREFIX} {line}\n")

    async def close(self, last_line: str) -> None:
        await self.write(f"{NOTE_PREFIX} {last_line}\n", eof=True)

    def written(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self.tail.extend(lines)

    def last_lines(self) -> list[str]:
        return [*self.tail, *([self._partial] if self._partial else [])]
