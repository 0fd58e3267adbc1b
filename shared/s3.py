"""Artifacts in an S3-compatible store: the client and what every service does with it.

The builder writes artifacts here when ``LABFLEET_ARTIFACT_STORE=s3`` (see
``builder/adapters/s3_store``); the gateway streams them to downloads, the deployer fetches
them to QEMU hosts and retention deletes them.  An object is ``<build_id>/<name>`` in the
bucket ``LABFLEET_S3_BUCKET``, its build's metadata as S3 user metadata
(``x-amz-meta-build-id``, ``-commit``, ``-toolchain``, …) and its SHA-256 as
``x-amz-meta-sha256``, so any S3 client finds where and how it was built.

The client is aiobotocore: botocore's own request signing, retries and S3 dialects
(path-style addressing for MinIO, Ceph and the like) on aiohttp, so uploads and
downloads stream on the event loop without a thread per request; it is maintained by
aio-libs and follows botocore's releases.  aioboto3 only wraps it; boto3 in a thread would
hold a thread per part upload and per download; obstore hides the multipart upload's
parts and checksums that the upload verifies.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from .settings import S3Config

log = logging.getLogger(__name__)

#: bytes S3 allows for all user metadata of an object (keys and values)
METADATA_LIMIT = 2048
#: bytes one read of a downloaded object's body hands on
READ_CHUNK = 1024 * 1024


class S3ObjectMissing(Exception):
    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"no object {key!r} in the S3 bucket {bucket!r}")
        self.bucket = bucket
        self.key = key


class S3ObjectCorrupt(Exception):
    """The bytes read differ from the object's recorded size or SHA-256."""

    def __init__(self, bucket: str, key: str, why: str) -> None:
        super().__init__(f"S3 object {bucket}/{key}: {why}")
        self.bucket = bucket
        self.key = key
        self.why = why


class S3Unavailable(Exception):
    """The store did not answer, or refused otherwise than "no such object"."""

    def __init__(self, endpoint_url: str, action: str, detail: str) -> None:
        super().__init__(f"the S3 store at {endpoint_url} failed to {action}: {detail}")
        self.endpoint_url = endpoint_url
        self.action = action
        self.detail = detail


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int
    #: the whole file's SHA-256 (hex) from ``x-amz-meta-sha256``, "" when it has none
    sha256_hex: str
    #: the store's own ``ChecksumSHA256`` (base64; ``…-<parts>`` for a multipart
    #: object), "" when the store keeps none
    checksum_sha256: str
    metadata: dict[str, str]


def object_metadata(metadata: dict[str, str], sha256_hex: str = "") -> dict[str, str]:
    """The build's metadata as S3 user metadata: keys with "-" (``build-id``), values in
    printable ASCII (anything else percent-encoded, as HTTP headers carry them), the
    longest values shortened ("...") to fit S3's 2 KB for all metadata (the full values are
    in the events), and the file's SHA-256 as ``sha256``."""
    out = {k.replace("_", "-").lower(): quote(v, safe=_PRINTABLE)
           for k, v in metadata.items() if k.lower() != "sha256"}
    room = METADATA_LIMIT - (len("sha256") + len(sha256_hex) if sha256_hex else 0)
    while (excess := sum(len(k) + len(v) for k, v in out.items()) - room) > 0:
        key = max(out, key=lambda k: len(out[k]))
        value = out[key]
        if len(value) <= 3:
            raise ValueError("the metadata's keys alone exceed S3's 2 KB of user metadata")
        cut = value[:max(0, len(value) - excess - 3)]
        if "%" in cut[-2:]:  # not half a %XX escape
            cut = cut[:cut.rindex("%")]
        out[key] = cut + "..."
    if sha256_hex:
        out["sha256"] = sha256_hex
    return out


_PRINTABLE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def read_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """S3 user metadata back as the build's metadata (``build_id``: …)."""
    return {k.replace("-", "_"): unquote(v) for k, v in metadata.items() if k != "sha256"}


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: SHA-256 over the parts' SHA-256s (base64)."""
    return base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode()


class S3Store:
    """One client for the configured store, opened on first use and kept until
    :meth:`close` (connections are reused across requests)."""

    def __init__(self, config: S3Config, *, max_connections: int = 32) -> None:
        self.config = config
        self.bucket = config.bucket
        self._max_connections = max_connections
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._opening:  # one client, however many ask at once
            if self._client is not None:
                return self._client
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(get_session().create_client(
                "s3", endpoint_url=self.config.endpoint_url, region_name=self.config.region,
                aws_access_key_id=self.config.access_key_id,
                aws_secret_access_key=self.config.secret_access_key.get_secret_value(),
                config=AioConfig(
                    # path-style: S3-compatible stores rarely have a DNS name per bucket
                    s3={"addressing_style": "path"},
                    max_pool_connections=self._max_connections,
                    # checksums are computed here, once, where the bytes are read; not
                    # a CRC32 of every request body on top (which older S3-compatible
                    # servers refuse)
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"max_attempts": 3, "mode": "standard"})))
            self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def head(self, key: str, bucket: str | None = None) -> S3Object:
        bucket = bucket or self.bucket
        client = await self.client()
        try:
            info = await client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except STORE_ERRORS as exc:
            raise self._failed(exc, "look up", bucket, key) from None
        meta = {k.lower(): v for k, v in (info.get("Metadata") or {}).items()}
        return S3Object(bucket=bucket, key=key, size=int(info["ContentLength"]),
                        sha256_hex=meta.get("sha256", "").lower(),
                        checksum_sha256=info.get("ChecksumSHA256") or "",
                        metadata=read_metadata(meta))

    async def stream(self, obj: S3Object, *, expect_sha256: str | None = None
                     ) -> AsyncIterator[bytes]:
        """The object's bytes as they arrive (never the whole object in memory), checked
        at the end against its size and SHA-256 (``expect_sha256``, else its
        ``x-amz-meta-sha256``; "" checks the size only): :class:`S3ObjectCorrupt` instead
        of a quiet end."""
        client = await self.client()
        try:
            reply = await client.get_object(Bucket=obj.bucket, Key=obj.key)
        except STORE_ERRORS as exc:
            raise self._failed(exc, "read", obj.bucket, obj.key) from None
        body = reply["Body"]
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        except STORE_ERRORS as exc:
            raise self._failed(exc, "read", obj.bucket, obj.key) from None
        finally:
            body.close()
        want = obj.sha256_hex if expect_sha256 is None else expect_sha256
        if size != obj.size:
            raise S3ObjectCorrupt(obj.bucket, obj.key, f"{size} bytes read, {obj.size} stored")
        if want and digest.hexdigest() != want:
            raise S3ObjectCorrupt(obj.bucket, obj.key,
                                  f"SHA-256 {digest.hexdigest()} read, {want} recorded")

    async def delete(self, key: str, bucket: str | None = None) -> None:
        """Delete the object; one that is gone already is no error (S3 answers the same)."""
        client = await self.client()
        try:
            await client.delete_object(Bucket=bucket or self.bucket, Key=key)
        except STORE_ERRORS as exc:
            raise self._failed(exc, "delete", bucket or self.bucket, key) from None

    def _failed(self, exc: BaseException, action: str, bucket: str, key: str) -> Exception:
        """No such object (404, or a bucket that is not there), or the store failing."""
        if hasattr(exc, "response") and _status(exc) == 404 and action != "delete":
            return S3ObjectMissing(bucket, key)
        return S3Unavailable(self.config.endpoint_url, f"{action} {bucket}/{key}", str(exc))


def _errors() -> tuple[type[BaseException], ...]:
    from aiohttp import ClientError as HttpError
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, HttpError)


#: what the client raises when the store fails or cannot be reached
STORE_ERRORS = _errors()


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
