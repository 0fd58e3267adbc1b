"""Current state other services publish: latest samples and health (KV buckets), build
logs (stream LOGS).  Artifacts are read with :mod:`labfleet.shared.artifacts`."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from labfleet.shared.events.build import LogChunk, log_subject
from labfleet.shared.events.health import HEALTH_BUCKET, SAMPLES_BUCKET, HealthStatus, HostSample
from labfleet.shared.logstream import read_chunks
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)

class HealthState(BaseModel):
    """What a page shows of a resource's health: read from a ``health`` KV entry
    (a ``HealthRecord``) or from a ``health.changed`` event."""

    model_config = ConfigDict(extra="ignore")

    status: HealthStatus = HealthStatus.UNKNOWN
    reason: str = ""
    last_seen: datetime | None = None
    warnings: list[str] = []


class _SampleEnvelope(BaseModel):
    """A ``HostSampled`` event, for buckets or subjects that carry the whole event."""

    model_config = ConfigDict(extra="ignore")
    sample: HostSample


def parse_sample(data: bytes) -> HostSample | None:
    """The latest sample from a KV value or a ``sample.>`` message (either shape)."""
    try:
        return _SampleEnvelope.model_validate_json(data).sample
    except ValidationError:
        pass
    try:
        return HostSample.model_validate_json(data)
    except ValidationError:
        log.warning("unreadable sample", extra={"bytes": len(data)})
        return None


def parse_health(data: bytes) -> HealthState | None:
    try:
        return HealthState.model_validate_json(data)
    except ValidationError:
        log.warning("unreadable health entry", extra={"bytes": len(data)})
        return None


class SharedState:
    def __init__(self, bus: Any) -> None:
        self.bus = bus  # its JetStream context exists once the bus is connected
        self._kv: dict[str, Any] = {}

    @property
    def js(self) -> Any:
        return self.bus.js

    async def _bucket(self, name: str) -> Any | None:
        if name not in self._kv:
            try:
                self._kv[name] = await self.js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                return None  # the owner has not created it yet: nothing to read
        return self._kv[name]

    async def _get(self, bucket: str, key: str) -> bytes | None:
        kv = await self._bucket(bucket)
        if kv is None:
            return None
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.js.errors.NotFoundError, nats.js.errors.NoStreamResponseError):
            # the bucket went with a NATS restart (samples live in memory) until its owner
            # makes it again: nothing to read yet, and the handle is looked up anew
            self._kv.pop(bucket, None)
            return None
        return entry.value if entry.value else None

    async def latest_sample(self, resource_id: uuid.UUID) -> HostSample | None:
        data = await self._get(SAMPLES_BUCKET, str(resource_id))
        return parse_sample(data) if data else None

    async def health(self, resource_id: uuid.UUID) -> HealthState | None:
        data = await self._get(HEALTH_BUCKET, str(resource_id))
        return parse_health(data) if data else None

    async def all_entries(self, bucket: str) -> dict[str, bytes]:
        """Every current value of a bucket (used once to seed the live caches)."""
        kv = await self._bucket(bucket)
        if kv is None:
            return {}
        out: dict[str, bytes] = {}
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    break
                if entry.value:
                    out[entry.key] = entry.value
        finally:
            await watcher.stop()
        return out


# ---- build logs -----------------------------------------------------------------------


def read_log(js: Any, build_id: uuid.UUID, *, follow: bool, idle_timeout: float = 2.0,
             follow_timeout: float = 3600.0) -> AsyncIterator[LogChunk]:
    """A build's log chunks (see :func:`labfleet.shared.logstream.read_chunks`)."""
    return read_chunks(js, log_subject(build_id), LogChunk, follow=follow,
                       idle_timeout=idle_timeout, follow_timeout=follow_timeout)
