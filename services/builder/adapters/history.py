"""Compile histories in a JetStream key-value bucket: key = what was compiled, value =
how many lines make printed and how long it took (the last successful compile wins).

Any builder replica reads and writes it; losing it only loses the next estimate.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from ..domain.progress import CompileHistory

log = logging.getLogger(__name__)
BUCKET = "builder-compile-history"


class CompileHistories:
    def __init__(self, jetstream: Callable[[], Any], bucket: str = BUCKET) -> None:
        self._jetstream = jetstream
        self.bucket = bucket
        self._kv: Any = None

    async def _open(self) -> Any:
        if self._kv is None:
            js = self._jetstream()
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(config=KeyValueConfig(
                    bucket=self.bucket, history=1, storage=StorageType.FILE,
                    description="compile line counts and durations (labfleet builder)"))
        return self._kv

    async def get(self, key: str) -> CompileHistory | None:
        try:
            entry = await (await self._open()).get(key)
        except KeyNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - an estimate is never worth a failed build
            log.warning("compile history unreadable", extra={"key": key, "error": str(exc)})
            return None
        return CompileHistory.from_json(entry.value or b"")

    async def put(self, key: str, history: CompileHistory) -> None:
        try:
            await (await self._open()).put(key, history.to_json())
        except Exception as exc:  # noqa: BLE001
            log.warning("compile history not saved", extra={"key": key, "error": str(exc)})
