"""Reading stored artifacts, from the store the build recorded for each of them.

The builder writes an artifact to one of two stores and records which in its
:class:`~labfleet.shared.events.build.ArtifactInfo` (``backend`` and ``bucket``): the
JetStream object store (``jetstream``; chunks on ``$O.<bucket>.C.<nuid>``) or an
S3-compatible store (``s3``).  Everyone who reads one — the gateway's download, the
deployer's fetch, the builder's retention — goes through :class:`ArtifactReader`, which
goes to that store and that bucket, never to a default, and checks what it reads against
the recorded SHA-256.

Errors carry a message a person can act on: :class:`ArtifactNotFound` (not in the
recorded store, e.g. expired), :class:`ArtifactCorrupt` (bytes differ from the record),
:class:`ArtifactStoreUnavailable` (the store did not answer, or is not configured here).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.js.errors

from .events.build import ArtifactInfo
from .s3 import S3Object, S3ObjectCorrupt, S3ObjectMissing, S3Store, S3Unavailable

log = logging.getLogger(__name__)

#: the JetStream object store bucket of artifacts recorded before buckets were recorded
DEFAULT_BUCKET = "artifacts"


def configured_bucket(environ: dict[str, str] | None = None) -> str:
    """The JetStream bucket the builder stores new artifacts in
    (``LABFLEET_BUILDER_ARTIFACT_BUCKET``): the bus's permissions grant that one."""
    env = os.environ if environ is None else environ
    return env.get("LABFLEET_BUILDER_ARTIFACT_BUCKET") or DEFAULT_BUCKET


class ArtifactError(Exception):
    pass


class ArtifactNotFound(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


class ArtifactStoreUnavailable(ArtifactError):
    pass


@dataclass(frozen=True)
class StoredObject:
    """An artifact as its store has it: size and SHA-256 (hex) as stored."""

    name: str
    size: int
    sha256_hex: str
    backend: str = "jetstream"
    bucket: str = DEFAULT_BUCKET
    #: the object store's chunk id (JetStream)
    nuid: str = ""
    #: the S3 store's answer to HEAD (S3)
    s3: S3Object | None = None


class ArtifactReader:
    """``jetstream`` returns the service's JetStream context (``None``: none here);
    ``s3`` is the service's S3 store, where it has one; ``who`` names the service in the
    message that says an S3 store must be configured."""

    def __init__(self, jetstream: Callable[[], Any] | None, s3: S3Store | None = None,
                 *, who: str = "service") -> None:
        self._jetstream = jetstream
        self.s3 = s3
        self.who = who

    async def stat(self, info: ArtifactInfo) -> StoredObject:
        if info.backend == "s3":
            store = self._s3_for(info)
            try:
                obj = await store.head(info.object_name, info.bucket)
            except S3ObjectMissing:
                raise ArtifactNotFound(
                    f"artifact {info.name} ({info.object_name}) is not in the S3 bucket "
                    f"{info.bucket}") from None
            except S3Unavailable as exc:
                raise ArtifactStoreUnavailable(f"artifact {info.name}: {exc}") from None
            return StoredObject(name=info.object_name, size=obj.size,
                                sha256_hex=obj.sha256_hex, backend="s3", bucket=obj.bucket,
                                s3=obj)
        return await jetstream_stat(self._js(), info.bucket or DEFAULT_BUCKET,
                                    info.object_name, label=info.name)

    def stream(self, obj: StoredObject, *, expect_sha256: str | None = None
               ) -> AsyncIterator[bytes]:
        """The bytes as they arrive (never the whole file in memory), checked at the end
        against ``expect_sha256`` (else the store's own digest): :class:`ArtifactCorrupt`
        instead of a quiet end."""
        if obj.backend == "s3":
            assert obj.s3 is not None
            return self._stream_s3(obj, expect_sha256)
        return jetstream_stream(self._js(), obj, expect_sha256=expect_sha256)

    async def fetch(self, info: ArtifactInfo, into: Path) -> None:
        """The artifact written to ``into``, checked against the build's record; the
        writing and hashing happen off the event loop."""
        obj = await self.stat(info)
        with into.open("wb") as f:
            async for chunk in self.stream(obj, expect_sha256=info.sha256):
                await asyncio.to_thread(f.write, chunk)

    async def delete(self, info: ArtifactInfo) -> None:
        """Deletes it from its store; one that is gone already is no error."""
        if info.backend == "s3":
            try:
                await self._s3_for(info).delete(info.object_name, info.bucket)
            except S3Unavailable as exc:
                raise ArtifactStoreUnavailable(f"artifact {info.name}: {exc}") from None
            return
        try:
            store = await self._js().object_store(info.bucket or DEFAULT_BUCKET)
            await store.delete(info.object_name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError,
                nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
            pass  # gone already: the goal is met

    def _js(self) -> Any:
        if self._jetstream is None:
            raise ArtifactStoreUnavailable(f"the {self.who} has no JetStream connection")
        return self._jetstream()

    def _s3_for(self, info: ArtifactInfo) -> S3Store:
        if self.s3 is None:
            raise ArtifactStoreUnavailable(
                f"artifact {info.name} is in the S3 bucket {info.bucket}, but the {self.who} "
                "has no S3 store configured: set LABFLEET_S3_ENDPOINT_URL, LABFLEET_S3_BUCKET "
                f"and its access key for the {self.who}")
        return self.s3

    async def _stream_s3(self, obj: StoredObject, expect_sha256: str | None
                         ) -> AsyncIterator[bytes]:
        assert self.s3 is not None and obj.s3 is not None
        try:
            async for chunk in self.s3.stream(obj.s3, expect_sha256=expect_sha256):
                yield chunk
        except S3ObjectCorrupt as exc:
            log.error("artifact digest mismatch", extra={"object": obj.name, "why": exc.why})
            raise ArtifactCorrupt(f"artifact {obj.name} in the S3 store: {exc.why}") from None
        except S3Unavailable as exc:  # mid-stream: the read is cut short
            log.error("artifact store failed", extra={"object": obj.name, "error": str(exc)})
            raise ArtifactStoreUnavailable(f"artifact {obj.name}: {exc}") from None


# ---- the JetStream object store ---------------------------------------------------------


async def jetstream_stat(js: Any, bucket: str, object_name: str, *, label: str = ""
                         ) -> StoredObject:
    try:
        store = await js.object_store(bucket)
        info = await store.get_info(object_name)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.ObjectNotFoundError,
            nats.js.errors.NotFoundError):
        raise ArtifactNotFound(
            f"artifact {label or object_name} ({object_name}) is not in the object store "
            f"bucket {bucket}") from None
    digest = (info.digest or "").split("=", 1)[-1] if info.digest else ""
    sha = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() if digest else ""
    return StoredObject(name=object_name, size=info.size or 0, sha256_hex=sha,
                        backend="jetstream", bucket=bucket, nuid=info.nuid or "")


#: bytes one direct-get batch asks for: the server sends them without waiting, so they
#: are what waits in this process's subscription while the client reads
BATCH_BYTES = 16 * 1024 * 1024
REPLY_TIMEOUT_S = 30.0


async def jetstream_stream(js: Any, obj: StoredObject, *, expect_sha256: str | None = None
                           ) -> AsyncIterator[bytes]:
    """The object's chunks as they arrive, checked against ``expect_sha256`` (else its
    stored digest) at the end.

    The chunks are read with JetStream batched direct gets (NATS 2.11+): one request
    names the object's chunk subject, the sequence to start after and ``max_bytes``, and
    the server answers with that many bytes of chunks and an end-of-batch status; the next
    request starts after the last sequence received.  No consumer is created and there
    are no flow-control round trips (an ordered push consumer delivered about half as
    fast; one direct get per 1 MiB chunk, a round trip each, about two thirds as fast).  A
    server that predates batches answers with one chunk per request, which works the same
    way, only slower; a bucket whose stream does not allow direct gets is read through an
    ordered consumer instead.
    """
    want = obj.sha256_hex if expect_sha256 is None else expect_sha256
    if obj.size == 0:
        _check(obj, 0, hashlib.sha256(), want)
        return
    nc = js._nc
    api = f"$JS.API.DIRECT.GET.OBJ_{obj.bucket}"
    subject = f"$O.{obj.bucket}.C.{obj.nuid}"
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
                    async for chunk in _stream_by_consumer(js, obj, subject, want):
                        yield chunk
                    return
                if status:
                    log.error("artifact chunk missing", extra={
                        "object": obj.name, "status": status, "after_sequence": seq})
                    raise ArtifactCorrupt(
                        f"artifact {obj.name}: a chunk is missing from the object store "
                        f"bucket {obj.bucket} (status {status})")
                seq = int(headers["Nats-Sequence"])
                await asyncio.to_thread(digest.update, msg.data)
                size += len(msg.data)
                yield msg.data
                if "Nats-Num-Pending" not in headers:  # a server without batches
                    break
    except TimeoutError:
        log.error("artifact chunk not delivered", extra={"object": obj.name,
                                                           "after_sequence": seq})
        raise ArtifactStoreUnavailable(
            f"artifact {obj.name}: the object store did not deliver the chunk after "
            f"sequence {seq} within {REPLY_TIMEOUT_S:.0f} s") from None
    finally:
        await sub.unsubscribe()
    _check(obj, size, digest, want)


async def _stream_by_consumer(js: Any, obj: StoredObject, subject: str, want: str
                              ) -> AsyncIterator[bytes]:
    sub = await js.subscribe(subject, ordered_consumer=True)
    digest = hashlib.sha256()
    size = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=REPLY_TIMEOUT_S)
            await asyncio.to_thread(digest.update, msg.data)
            size += len(msg.data)
            yield msg.data
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    _check(obj, size, digest, want)


def _check(obj: StoredObject, size: int, digest: Any, want: str) -> None:
    if size != obj.size:
        log.error("artifact size mismatch", extra={"object": obj.name})
        raise ArtifactCorrupt(f"artifact {obj.name} in the object store: {size} bytes read, "
                              f"{obj.size} stored")
    if want and digest.hexdigest() != want:
        log.error("artifact digest mismatch", extra={"object": obj.name})
        raise ArtifactCorrupt(
            f"artifact {obj.name} in the object store has checksum {digest.hexdigest()}, "
            f"the build recorded {want}")
