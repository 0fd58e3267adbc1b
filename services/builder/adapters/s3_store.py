"""Artifacts in an S3-compatible store (``LABFLEET_ARTIFACT_STORE=s3``), streamed from the
build server.

The same interface as the JetStream ``ArtifactStore`` (``upload`` → ``Stored``,
``stored_digest``), so a build attempt uses either.  A file is read over SFTP in 8 MiB
parts (growing by 8 MiB every thousand parts, for S3's limit of 10,000), each part
hashed (SHA-256 of the part, and of the whole file) in a worker thread and sent as one
part of a multipart upload with its ``ChecksumSHA256``, a few parts on their way at
once; nothing is staged on local disk.  A file that fits in one part is one ``PutObject``.
An upload that fails half-way is aborted, so the store keeps neither an object nor the
upload's parts.

The key is ``<build_id>/<name>``; the build's metadata and the file's SHA-256 (as the
build server computed it, given by the caller) are S3 user metadata.  What the store
holds is checked against what was read: the store's own checksum (the full SHA-256 of a
single-part object, or the SHA-256 of the parts' SHA-256s of a multipart one) against the
same computed here; a store that keeps no checksum is read back and hashed.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import deque
from typing import Any

from labfleet.shared.s3 import (
    STORE_ERRORS,
    S3ObjectMissing,
    S3Store,
    S3Unavailable,
    composite_sha256,
    object_metadata,
)

from ..domain.errors import BuildError
from .artifact_store import Stored

log = logging.getLogger(__name__)

#: bytes per part (S3 wants at least 5 MiB for every part but the last)
PART_SIZE = 8 * 1024 * 1024
#: bytes per SFTP read (asyncssh turns one read into parallel requests)
READ_SIZE = 4 * 1024 * 1024
#: parts sent at once
IN_FLIGHT = 3
#: parts of one size before they grow (S3 allows 10,000 parts of differing sizes)
PARTS_PER_SIZE = 1000
#: objects whose computed checksums are remembered for ``stored_digest``
_REMEMBERED = 1000


class S3ArtifactStore:
    backend = "s3"
    #: an object's metadata (with the file's SHA-256) is written before its bytes
    needs_server_sums_first = True

    def __init__(self, s3: S3Store) -> None:
        self.s3 = s3
        self.bucket = s3.bucket
        self._bucket_checked = False
        #: object name → (whole file's SHA-256 hex, store checksum expected (base64))
        self._computed: dict[str, tuple[str, str]] = {}

    async def _ensure_bucket(self) -> Any:
        client = await self.s3.client()
        if self._bucket_checked:
            return client
        try:
            await client.head_bucket(Bucket=self.bucket)
        except client.exceptions.ClientError as exc:
            if _status(exc) == 403:  # credentials for its objects only: taken as there
                self._bucket_checked = True
                return client
            if _status(exc) != 404:
                raise
            config = ({} if self.s3.config.region == "us-east-1" else
                      {"CreateBucketConfiguration": {
                          "LocationConstraint": self.s3.config.region}})
            try:
                await client.create_bucket(Bucket=self.bucket, **config)
            except client.exceptions.ClientError as exc2:  # made meanwhile by a replica
                if _code(exc2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            log.info("S3 bucket created", extra={"bucket": self.bucket})
        self._bucket_checked = True
        return client

    async def upload(self, object_name: str, remote_file: Any,
                     metadata: dict[str, str] | None = None, *,
                     chunk_size: int = PART_SIZE, sha256: str = "") -> Stored:
        """Stream ``remote_file`` (anything with ``async read(n)``) into the object
        ``object_name``, replacing one of that name; ``sha256`` is the file's SHA-256 as
        its server computed it, recorded as ``x-amz-meta-sha256``.  The store failing
        is a :class:`BuildError` ``artifact_store_failed`` that says what it answered."""
        try:
            return await self._upload(object_name, remote_file, metadata, chunk_size, sha256)
        except (*STORE_ERRORS, S3Unavailable, S3ObjectMissing) as exc:
            if hasattr(exc, "response") and _code(exc) in _DIGEST_REFUSED:
                raise _corrupt(object_name, f"the store refused the bytes sent: {exc}") from None
            name = object_name.rsplit("/", 1)[-1]
            raise BuildError(
                "artifact_store_failed", f"{name}: the S3 store at "
                f"{self.s3.config.endpoint_url} (bucket {self.bucket}) failed: {exc}",
                hint="check that the store is up and that LABFLEET_S3_* (credentials, "
                     "bucket, region) are right; then build again",
                details={"artifact": name}) from None

    async def stored_digest(self, object_name: str) -> str:
        """The SHA-256 (hex) of what the store holds (see ``_stored_digest``)."""
        try:
            return await self._stored_digest(object_name)
        except (*STORE_ERRORS, S3Unavailable, S3ObjectMissing) as exc:
            name = object_name.rsplit("/", 1)[-1]
            raise BuildError(
                "artifact_store_failed", f"{name}: checking it in the S3 store at "
                f"{self.s3.config.endpoint_url} failed: {exc}",
                hint="check that the store is up; then build again",
                details={"artifact": name}) from None

    async def _upload(self, object_name: str, remote_file: Any,
                      metadata: dict[str, str] | None, chunk_size: int,
                      sha256: str) -> Stored:
        client = await self._ensure_bucket()
        part_size = max(1, chunk_size)
        meta = object_metadata(metadata or {}, sha256.lower())
        whole = hashlib.sha256()
        loop = asyncio.get_running_loop()

        async def read_part(size: int) -> bytes:
            buf = bytearray()
            while len(buf) < size:
                data = await remote_file.read(min(READ_SIZE, size - len(buf)))
                if not data:
                    break
                buf += data
            return bytes(buf)

        def hash_part(part: bytes) -> bytes:
            whole.update(part)
            return hashlib.sha256(part).digest()

        first = await read_part(part_size)
        first_digest = await loop.run_in_executor(None, hash_part, first)
        if len(first) < part_size:  # all of it: one request
            checksum = base64.b64encode(first_digest).decode()
            await client.put_object(Bucket=self.bucket, Key=object_name, Body=first,
                                    Metadata=meta, ChecksumSHA256=checksum,
                                    ContentType="application/octet-stream")
            return await self._stored(object_name, len(first), whole.hexdigest(), checksum)

        upload_id = (await client.create_multipart_upload(
            Bucket=self.bucket, Key=object_name, Metadata=meta, ChecksumAlgorithm="SHA256",
            ContentType="application/octet-stream"))["UploadId"]
        digests: list[bytes] = []
        sending: deque[asyncio.Task[dict[str, Any]]] = deque()
        done: list[dict[str, Any]] = []
        size = 0

        async def send(number: int, part: bytes, digest: bytes) -> dict[str, Any]:
            checksum = base64.b64encode(digest).decode()
            reply = await client.upload_part(
                Bucket=self.bucket, Key=object_name, UploadId=upload_id, PartNumber=number,
                Body=part, ChecksumSHA256=checksum)
            theirs = reply.get("ChecksumSHA256")
            if theirs and theirs != checksum:
                raise _corrupt(object_name, f"part {number} stored with ChecksumSHA256 "
                               f"{theirs}, sent with {checksum}")
            return {"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": checksum}

        try:
            part, digest = first, first_digest
            while part:
                digests.append(digest)
                size += len(part)
                sending.append(asyncio.create_task(send(len(digests), part, digest)))
                # the next part is read and hashed while this one (and a few before it)
                # are on their way
                part = await read_part(_part_size(part_size, len(digests) + 1))
                digest = await loop.run_in_executor(None, hash_part, part) if part else b""
                while len(sending) >= IN_FLIGHT or (not part and sending):
                    done.append(await sending.popleft())
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_name, UploadId=upload_id,
                MultipartUpload={"Parts": done})
        except BaseException:
            await asyncio.shield(self._abort(client, object_name, upload_id, sending))
            raise
        return await self._stored(object_name, size, whole.hexdigest(),
                                  composite_sha256(digests))

    async def _abort(self, client: Any, object_name: str, upload_id: str,
                     sending: deque[asyncio.Task[dict[str, Any]]]) -> None:
        for task in sending:
            task.cancel()
        await asyncio.gather(*sending, return_exceptions=True)
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=object_name,
                                                UploadId=upload_id)
        except Exception:  # the upload's own error is the one to report
            log.exception("aborting the S3 multipart upload failed; the store's lifecycle "
                          "rule for incomplete uploads has to remove its parts",
                          extra={"bucket": self.bucket, "object": object_name})

    async def _stored(self, object_name: str, size: int, sha256_hex: str,
                      checksum: str) -> Stored:
        self._computed[object_name] = (sha256_hex, checksum)
        while len(self._computed) > _REMEMBERED:
            self._computed.pop(next(iter(self._computed)))
        return Stored(object_name=object_name, size=size, sha256=sha256_hex,
                      stored_sha256=await self._stored_digest(object_name))

    async def _stored_digest(self, object_name: str) -> str:
        """The SHA-256 (hex) of what the store holds: the one computed while uploading when
        the store's own checksum of the object agrees with it, else the store's checksum
        as it differs; a store that keeps no checksum (or an object uploaded by another
        process) is read back and hashed."""
        obj = await self.s3.head(object_name, self.bucket)
        computed = self._computed.get(object_name)
        if obj.checksum_sha256 and computed is not None:
            sha256_hex, expected = computed
            theirs = obj.checksum_sha256.split("-", 1)[0]
            if theirs == expected:
                return sha256_hex
            return f"(S3 ChecksumSHA256 {obj.checksum_sha256}, computed {expected})"
        digest = hashlib.sha256()
        async for chunk in self.s3.stream(obj, expect_sha256=""):  # no check: the sum asked
            digest.update(chunk)
        return digest.hexdigest()


def _part_size(base: int, number: int) -> int:
    """Part ``number``'s size: S3 takes at most 10,000 parts, so every thousand parts the
    parts grow by ``base`` (8 MiB parts: 8 GB in the first thousand, 430 GB in all)."""
    return base * (1 + (number - 1) // PARTS_PER_SIZE)


#: what S3 answers when a body does not match the checksum sent with it
_DIGEST_REFUSED = ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch")


def _corrupt(object_name: str, why: str) -> BuildError:
    name = object_name.rsplit("/", 1)[-1]
    return BuildError("artifact_checksum_mismatch", f"{name}: {why}",
                      hint="the transfer to the S3 store was corrupted; build again",
                      details={"artifact": name})


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")
