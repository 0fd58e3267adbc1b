"""Current state in JetStream KV, for readers that must not touch the monitor's database.

* ``samples`` — key = resource id, value = the latest :class:`HostSample` JSON.  Kept in
  memory storage: it is rewritten every poll, so a NATS restart loses a few seconds.
* ``health`` — key = resource id, value = the :class:`HealthRecord` JSON, written when a
  dashboard would see a difference (status, warnings, missed polls), not on every poll.

A bucket found missing on a write (the memory one after a NATS restart, either after the
store was lost) is created again and the write repeated, so the monitor does not fail on
every poll until it is restarted itself.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import nats.js.errors
from labfleet.shared.events.health import HEALTH_BUCKET, SAMPLES_BUCKET, HealthRecord, HostSample
from nats.js.api import KeyValueConfig, StorageType

log = logging.getLogger(__name__)


async def open_bucket(js: Any, name: str, storage: StorageType, replicas: int) -> Any:
    """Bind to the bucket, creating it when missing (another service may have made it)."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, storage=storage,
                                                        replicas=replicas))
    except nats.js.errors.BadRequestError:  # created meanwhile with other settings: use it
        return await js.key_value(name)


#: what a write to a bucket whose stream is gone raises
BUCKET_GONE = (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError,
               nats.js.errors.BucketNotFoundError)


class CurrentState:
    def __init__(self, samples: Any, health: Any, js: Any = None, replicas: int = 1) -> None:
        self.samples = samples
        self.health = health
        self.js = js
        self.replicas = replicas

    @classmethod
    async def open(cls, js: Any, replicas: int = 1) -> CurrentState:
        return cls(await open_bucket(js, SAMPLES_BUCKET, StorageType.MEMORY, replicas),
                   await open_bucket(js, HEALTH_BUCKET, StorageType.FILE, replicas),
                   js, replicas)

    async def put_sample(self, sample: HostSample) -> None:
        await self._put("samples", SAMPLES_BUCKET, StorageType.MEMORY,
                        str(sample.resource_id), sample.model_dump_json().encode())

    async def put_health(self, record: HealthRecord) -> None:
        await self._put("health", HEALTH_BUCKET, StorageType.FILE,
                        str(record.resource_id), record.model_dump_json().encode())

    async def _put(self, attr: str, name: str, storage: StorageType, key: str,
                   value: bytes) -> None:
        try:
            await getattr(self, attr).put(key, value)
            return
        except BUCKET_GONE:
            if self.js is None:
                raise
        log.warning("KV bucket %s is gone (NATS restarted?): creating it again", name)
        setattr(self, attr, await open_bucket(self.js, name, storage, self.replicas))
        await getattr(self, attr).put(key, value)

    async def forget(self, resource_id: uuid.UUID) -> None:
        for bucket in (self.samples, self.health):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await bucket.purge(str(resource_id))
