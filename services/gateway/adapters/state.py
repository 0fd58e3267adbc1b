"""Current state other services publish: latest samples and health (KV buckets), stored
artifacts (object store), build logs (stream LOGS)."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from labfleet.shared.events.build import LogChunk
from labfleet.shared.events.health import HEALTH_BUCKET, SAMPLES_BUCKET, HealthStatus, HostSample
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)

ARTIFACTS_BUCKET = "artifacts"


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


# ---- artifacts ------------------------------------------------------------------------


class ArtifactNotFound(Exception):
    pass


class ArtifactCorrupt(Exception):
    pass


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    sha256_hex: str
    nuid: str


async def artifact_info(js: Any, object_name: str) -> StoredObject:
    try:
        store = await js.object_store(ARTIFACTS_BUCKET)
        info = await store.get_info(object_name)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.ObjectNotFoundError,
            nats.js.errors.NotFoundError):
        raise ArtifactNotFound(object_name) from None
    digest = (info.digest or "").split("=", 1)[-1] if info.digest else ""
    sha = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() if digest else ""
    return StoredObject(name=object_name, size=info.size or 0, sha256_hex=sha,
                        nuid=info.nuid or "")


#: bytes one direct-get batch asks for: the server sends them without waiting, so they
#: are what waits in this process's subscription while the client reads
BATCH_BYTES = 16 * 1024 * 1024
REPLY_TIMEOUT_S = 30.0


async def stream_artifact(js: Any, obj: StoredObject) -> AsyncIterator[bytes]:
    """The object's chunks as they arrive (never the whole file in memory), checked
    against its stored digest at the end.

    The chunks are read with JetStream batched direct gets (NATS 2.11+): one request
    names the object's chunk subject, the sequence to start after and ``max_bytes``, and
    the server answers with that many bytes of chunks and an end-of-batch status; the next
    request starts after the last sequence received.  No consumer is created and there
    are no flow-control round trips (an ordered push consumer delivered about half as
    fast; one direct get per 1 MiB chunk, a round trip each, about two thirds as fast).  A server
    that predates batches answers with one chunk per request, which works the same way,
    only slower; a bucket whose stream does not allow direct gets is read through an
    ordered consumer instead.
    """
    if obj.size == 0:
        return
    nc = js._nc
    api = f"$JS.API.DIRECT.GET.OBJ_{ARTIFACTS_BUCKET}"
    subject = f"$O.{ARTIFACTS_BUCKET}.C.{obj.nuid}"
    inbox = nc.new_inbox()
    # room for a whole batch plus the chunk that overshoots it
    sub = await nc.subscribe(inbox, pending_bytes_limit=4 * BATCH_BYTES,
                             pending_msgs_limit=1 << 16)
    digest = hashlib.sha256()
    size = seq = 0
    try:
        while size < obj.size:
            await nc.publish(api, json.dumps({"seq": seq + 1, "next_by_subj": subject,
                                              "batch": 1 << 16, "max_bytes": BATCH_BYTES})
                             .encode(), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=REPLY_TIMEOUT_S)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "204":  # end of this batch
                    break
                if status == "503" and size == 0:  # no direct gets on this stream
                    async for chunk in _stream_by_consumer(js, obj, subject):
                        yield chunk
                    return
                if status:
                    log.error("artifact chunk missing", extra={
                        "object": obj.name, "status": status, "after_sequence": seq})
                    raise ArtifactCorrupt(obj.name)
                seq = int(headers["Nats-Sequence"])
                digest.update(msg.data)
                size += len(msg.data)
                yield msg.data
                if "Nats-Num-Pending" not in headers:  # a server without batches
                    break
    except TimeoutError:
        log.error("artifact chunk not delivered", extra={"object": obj.name,
                                                           "after_sequence": seq})
        raise ArtifactCorrupt(obj.name) from None
    finally:
        await sub.unsubscribe()
    if size != obj.size or (obj.sha256_hex and digest.hexdigest() != obj.sha256_hex):
        log.error("artifact digest mismatch", extra={"object": obj.name})
        raise ArtifactCorrupt(obj.name)


async def _stream_by_consumer(js: Any, obj: StoredObject, subject: str
                              ) -> AsyncIterator[bytes]:
    sub = await js.subscribe(subject, ordered_consumer=True)
    digest = hashlib.sha256()
    try:
        while True:
            msg = await sub.next_msg(timeout=30.0)
            digest.update(msg.data)
            yield msg.data
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if obj.sha256_hex and digest.hexdigest() != obj.sha256_hex:
        log.error("artifact digest mismatch", extra={"object": obj.name})
        raise ArtifactCorrupt(obj.name)


# ---- build logs -----------------------------------------------------------------------


def log_subject(build_id: uuid.UUID) -> str:
    return f"log.build.{build_id}"


async def read_log(js: Any, build_id: uuid.UUID, *, follow: bool, idle_timeout: float = 2.0,
                   follow_timeout: float = 3600.0) -> AsyncIterator[LogChunk]:
    """Chunks of a build's log from the first one on.

    Without ``follow``: what is stored now (stops when nothing more is pending).  With
    ``follow``: waits for new chunks until one has ``eof=True`` (or ``follow_timeout``).
    """
    from nats.js.api import DeliverPolicy

    sub = await js.subscribe(log_subject(build_id), ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    try:
        if not follow:
            # an empty log has nothing pending: ask the stream before waiting on it
            try:
                await js.get_last_msg("LOGS", log_subject(build_id))
            except nats.js.errors.NotFoundError:
                return
        loop_deadline = follow_timeout if follow else idle_timeout
        while True:
            try:
                msg = await sub.next_msg(timeout=loop_deadline)
            except nats.errors.TimeoutError:
                return
            try:
                chunk = LogChunk.model_validate_json(msg.data)
            except ValidationError:
                continue
            yield chunk
            if chunk.eof:
                return
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
