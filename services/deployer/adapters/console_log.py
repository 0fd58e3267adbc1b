"""An environment's console on ``log.console.<env_id>`` (stream LOGS), written with the
shared :class:`~labfleet.shared.logstream.ChunkWriter`; the numbering runs across
deployments and restarts."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

from labfleet.shared.events.env import ConsoleChunk, console_subject
from labfleet.shared.logstream import STREAM, ChunkWriter

__all__ = ["STREAM", "ConsoleLog"]


class ConsoleLog(ChunkWriter):
    def __init__(self, js: object, env_id: uuid.UUID, deployment: int) -> None:
        super().__init__(
            js, console_subject(env_id), ConsoleChunk,
            lambda seq, text, eof: ConsoleChunk(env_id=env_id, deployment=deployment, seq=seq,
                                                at=datetime.now(UTC), text=text, eof=eof),
            f"console-{env_id}")
        self.env_id = env_id
        self.deployment = deployment

    async def open(self) -> ConsoleLog:
        await super().open()
        return self
