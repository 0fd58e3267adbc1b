"""Artifacts in the JetStream object store, streamed from the build server.

The object is written in the object store's own layout (chunks on ``$O.<bucket>.C.<nuid>``,
then its info on ``$O.<bucket>.M.<name>`` with a roll-up, digest ``SHA-256=``), so every
NATS client reads it; but not through nats-py's ``ObjectStore.put``, which reads a
file-like object in a worker thread and waits for each 128 KiB chunk's acknowledgement
(with ``sync_interval: always``, one fsync) before reading the next.  Here the SFTP file
is read ahead in 4 MiB blocks (asyncssh turns each into parallel requests) while earlier
4 MiB chunks are hashed and published with a few acknowledgements outstanding: reading the
server, hashing and storing overlap, nothing is staged on local disk, and the event loop
never blocks.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import api
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.nuid import NUID

BUCKET = "artifacts"
#: bytes per object-store chunk, at most the server's max_payload (``labfleet up``'s
#: server allows 8 MB; NATS's default 1 MB makes it 1 MiB): with every write synced, each
#: chunk is one fsync, so 4 MiB chunks store 200 MB in about 1.0 s where 1 MiB ones took 1.3 s
CHUNK = 4 * 1024 * 1024
#: bytes per SFTP read: asyncssh sends one such read as parallel requests (up to the
#: server's read limit each), so a bigger read leaves fewer idle round trips between reads
READ_SIZE = 4 * 1024 * 1024
#: bytes read from the server ahead of the chunk being published
READ_AHEAD_BYTES = 16 * 1024 * 1024
#: chunk publishes whose acknowledgement is still awaited
IN_FLIGHT = 4
ACK_TIMEOUT_S = 30.0
_ROLLUP = "sub"  # Nats-Rollup: replace the subject's earlier info message


def object_headers(metadata: dict[str, str]) -> dict[str, list[str]]:
    """The build's metadata as the object's headers (``Labfleet-Toolchain: gcc …``), in
    the multi-value form other NATS clients read."""
    return {"Labfleet-" + "-".join(w.capitalize() for w in k.split("_")): [v]
            for k, v in metadata.items()}


@dataclass(frozen=True)
class Stored:
    object_name: str
    size: int
    #: computed here while streaming
    sha256: str
    #: as the object store recorded it (hex)
    stored_sha256: str


class ArtifactStore:
    """The bucket, opened (or created) on first use: the connection exists only once the
    service has started."""

    backend = "jetstream"
    #: the object's info is written after its bytes, with the digest computed here: the
    #: server's own sums are compared afterwards and need not come first
    needs_server_sums_first = False

    def __init__(self, jetstream: Callable[[], Any], bucket: str = BUCKET) -> None:
        self._jetstream = jetstream
        self.bucket = bucket
        self._store: Any = None
        self._js: Any = None

    async def _open(self) -> Any:
        if self._store is not None:
            return self._store
        js = self._jetstream()
        try:
            self._store = await js.object_store(self.bucket)
        except BucketNotFoundError:
            try:
                self._store = await js.create_object_store(
                    self.bucket, config=ObjectStoreConfig(
                        description="build artifacts (labfleet builder)",
                        storage=StorageType.FILE))
            except Exception:  # noqa: BLE001 - created meanwhile by another replica
                self._store = await js.object_store(self.bucket)
        # one context for every upload: its asynchronous-acknowledgement inbox is made once
        self._js = js
        return self._store

    async def upload(self, object_name: str, remote_file: Any,
                     metadata: dict[str, str] | None = None, *,
                     chunk_size: int = CHUNK, sha256: str = "") -> Stored:
        """Stream ``remote_file`` (anything with ``async read(n)``, e.g. an asyncssh SFTP
        file) into the object ``object_name``; an object of that name is replaced.
        ``sha256`` (the server's sum, for stores that record it up front) is not needed
        here: the digest is computed while streaming and compared by the caller."""
        store = await self._open()
        js = self._js
        chunk_size = max(1, min(chunk_size, js._nc.max_payload))
        nuid = NUID().next().decode()
        chunk_subject = f"$O.{self.bucket}.C.{nuid}"
        try:
            previous = await store.get_info(object_name)
        except ObjectNotFoundError:
            previous = None

        blocks: asyncio.Queue[bytes | BaseException] = asyncio.Queue(
            maxsize=max(1, READ_AHEAD_BYTES // chunk_size))

        read_size = max(chunk_size, READ_SIZE // chunk_size * chunk_size)

        async def read_ahead() -> None:
            try:
                while data := await remote_file.read(read_size):
                    if len(data) <= chunk_size:
                        await blocks.put(data)  # a chunk as it is: no copy
                        continue
                    view = memoryview(data)
                    for at in range(0, len(view), chunk_size):
                        await blocks.put(bytes(view[at:at + chunk_size]))
                await blocks.put(b"")
            except Exception as exc:  # noqa: BLE001 - handed to the publishing side
                await blocks.put(exc)

        loop = asyncio.get_running_loop()
        sha256 = hashlib.sha256()
        size = chunks = 0
        acks: deque[asyncio.Future[Any]] = deque()
        hashed: asyncio.Future[None] | None = None
        reader = asyncio.create_task(read_ahead())
        try:
            while True:
                block = await blocks.get()
                if isinstance(block, BaseException):
                    raise block
                if not block:
                    break
                # hashlib lets go of the GIL on large buffers: hash in a worker thread
                # while this loop decrypts the next reads and publishes
                if hashed is not None:
                    await hashed
                hashed = loop.run_in_executor(None, sha256.update, block)
                acks.append(await js.publish_async(chunk_subject, block))
                size += len(block)
                chunks += 1
                if len(acks) >= IN_FLIGHT:
                    await asyncio.wait_for(acks.popleft(), ACK_TIMEOUT_S)
            while acks:
                await asyncio.wait_for(acks.popleft(), ACK_TIMEOUT_S)
            if hashed is not None:
                await hashed
            digest = "SHA-256=" + base64.urlsafe_b64encode(sha256.digest()).decode()
            info = api.ObjectInfo(
                name=object_name, bucket=self.bucket, nuid=nuid, size=size, chunks=chunks,
                mtime=datetime.now(UTC).isoformat(), digest=digest,
                headers=object_headers(metadata) if metadata else None,
                options=api.ObjectMetaOptions(max_chunk_size=chunk_size))
            await js.publish(_meta_subject(self.bucket, object_name),
                             json.dumps(info.as_dict()).encode(),
                             headers={api.Header.ROLLUP: _ROLLUP})
        except BaseException:
            reader.cancel()
            if hashed is not None:
                await asyncio.gather(hashed, return_exceptions=True)
            # chunks already sent are stored whether or not anyone waits for their
            # acknowledgement: purge only once the server has answered for each of them,
            # or a chunk stored after the purge would stay behind
            await asyncio.shield(self._discard(chunk_subject, list(acks)))
            raise
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if previous is not None and not previous.deleted:
            await self._purge(f"$O.{self.bucket}.C.{previous.nuid}")
        return Stored(object_name=object_name, size=size, sha256=sha256.hexdigest(),
                      stored_sha256=await self.stored_digest(object_name))

    async def _discard(self, chunk_subject: str, acks: list[asyncio.Future[Any]]) -> None:
        if acks:
            await asyncio.wait(acks, timeout=ACK_TIMEOUT_S)
            for ack in acks:
                if ack.done() and not ack.cancelled():
                    ack.exception()  # retrieved: the upload's own error is what is raised
                else:
                    ack.cancel()
        await self._purge(chunk_subject)

    async def _purge(self, chunk_subject: str) -> None:
        await self._js.purge_stream(f"OBJ_{self.bucket}", subject=chunk_subject)

    async def stored_digest(self, object_name: str) -> str:
        """The SHA-256 the object store keeps for an object, read back (hex)."""
        info = await (await self._open()).get_info(object_name)
        digest = (info.digest or "").split("=", 1)[-1]
        return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()


def _meta_subject(bucket: str, object_name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(object_name.encode()).decode()}"
