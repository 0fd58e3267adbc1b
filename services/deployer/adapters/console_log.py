"""An environment's console on ``log.console.<env_id>`` (stream LOGS), in numbered chunks.

Published as read, without the outbox: a console is high volume and a chunk published
twice is dropped by its ``Nats-Msg-Id``.  ``seq`` goes on from the last chunk in the
stream, so the numbering runs across deployments and restarts.
"""
from __future__ import annotations

import codecs
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import NotFoundError

from labfleet.shared.events.env import ConsoleChunk, console_subject

STREAM = "LOGS"


class ConsoleLog:
    def __init__(self, js: Any, env_id: uuid.UUID, deployment: int) -> None:
        self.js = js
        self.env_id = env_id
        self.deployment = deployment
        self.subject = console_subject(env_id)
        self.seq = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def open(self) -> ConsoleLog:
        try:
            last = await self.js.get_last_msg(STREAM, self.subject)
            self.seq = ConsoleChunk.model_validate_json(last.data).seq
        except NotFoundError:
            self.seq = 0
        return self

    async def write_bytes(self, data: bytes) -> str:
        text = self._decoder.decode(data)
        await self.write(text)
        return text

    async def write(self, text: str, *, eof: bool = False) -> None:
        if not text and not eof:
            return
        self.seq += 1
        chunk = ConsoleChunk(env_id=self.env_id, deployment=self.deployment, seq=self.seq,
                             at=datetime.now(UTC), text=text, eof=eof)
        await self.js.publish(self.subject, chunk.model_dump_json().encode(),
                              headers={"Nats-Msg-Id": f"console-{self.env_id}-{self.seq}"})
