"""Artifacts in the JetStream object store, streamed from the build server.

nats-py's ``ObjectStore.put`` reads a file-like object in a worker thread; the reader
below bridges that thread to the SFTP file on the event loop, hashing every byte on the
way, so nothing is staged on local disk and the loop never blocks.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError

BUCKET = "artifacts"
CHUNK = 128 * 1024


class _SftpReader(io.RawIOBase):
    def __init__(self, remote_file: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._file = remote_file
        self._loop = loop
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # runs in put()'s worker thread
        future = asyncio.run_coroutine_threadsafe(self._file.read(len(buffer)), self._loop)
        data: bytes = future.result()
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.size += n
        return n


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

    def __init__(self, jetstream: Callable[[], Any], bucket: str = BUCKET) -> None:
        self._jetstream = jetstream
        self.bucket = bucket
        self._store: Any = None

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
        return self._store

    async def upload(self, object_name: str, remote_file: Any,
                     metadata: dict[str, str] | None = None) -> Stored:
        reader = _SftpReader(remote_file, asyncio.get_running_loop())
        meta = ObjectMeta(name=object_name, headers=object_headers(metadata)) if metadata else None
        info = await (await self._open()).put(object_name, reader, meta=meta)
        digest = (info.digest or "").split("=", 1)[-1]
        stored = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() if digest else ""
        return Stored(object_name=object_name, size=reader.size,
                      sha256=reader.sha256.hexdigest(), stored_sha256=stored)

    async def stored_digest(self, object_name: str) -> str:
        """The SHA-256 the object store keeps for an object, read back (hex)."""
        info = await (await self._open()).get_info(object_name)
        digest = (info.digest or "").split("=", 1)[-1]
        return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
