"""Artifacts from the JetStream object store bucket ``artifacts`` (``<build_id>/<name>``)
or, for those the builder stored there, the S3-compatible store (same key), written to a
local scratch file as they arrive and checked against the SHA-256 the build recorded."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from labfleet.shared.events.build import ArtifactInfo
from labfleet.shared.s3 import S3ObjectCorrupt, S3ObjectMissing, S3Store, S3Unavailable

BUCKET = "artifacts"


class ArtifactMissing(Exception):
    pass


class ArtifactSource:
    def __init__(self, jetstream: Any, s3: S3Store | None = None) -> None:
        self._jetstream = jetstream
        self._stores: dict[str, Any] = {}
        self.s3 = s3

    async def _store(self, bucket: str) -> Any:
        if bucket not in self._stores:
            self._stores[bucket] = await self._jetstream().object_store(bucket)
        return self._stores[bucket]

    async def fetch(self, artifact: ArtifactInfo, into: Path) -> None:
        if artifact.backend == "s3":
            await self._fetch_s3(artifact, into)
            return
        from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

        try:
            store = await self._store(artifact.bucket or BUCKET)
            with into.open("wb") as f:
                await store.get(artifact.object_name, writeinto=f)
        except (BucketNotFoundError, NotFoundError, ObjectNotFoundError):
            raise ArtifactMissing(
                f"artifact {artifact.name} ({artifact.object_name}) is not in the object "
                f"store bucket {artifact.bucket or BUCKET}") from None
        digest = hashlib.sha256()
        with into.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != artifact.sha256:
            raise ArtifactMissing(
                f"artifact {artifact.name} in the object store has checksum "
                f"{digest.hexdigest()}, the build recorded {artifact.sha256}")

    async def _fetch_s3(self, artifact: ArtifactInfo, into: Path) -> None:
        if self.s3 is None:
            raise ArtifactMissing(
                f"artifact {artifact.name} is in the S3 bucket {artifact.bucket}, but the "
                "deployer has no S3 store configured: set LABFLEET_S3_ENDPOINT_URL, "
                "LABFLEET_S3_BUCKET and its access key for the deployer")
        try:
            obj = await self.s3.head(artifact.object_name, artifact.bucket)
            with into.open("wb") as f:
                # the stream hashes what it hands on and raises on a difference
                async for chunk in self.s3.stream(obj, expect_sha256=artifact.sha256):
                    await asyncio.to_thread(f.write, chunk)
        except S3ObjectMissing:
            raise ArtifactMissing(
                f"artifact {artifact.name} ({artifact.object_name}) is not in the S3 bucket "
                f"{artifact.bucket}") from None
        except S3Unavailable as exc:
            raise ArtifactMissing(f"artifact {artifact.name}: {exc}") from None
        except S3ObjectCorrupt as exc:
            raise ArtifactMissing(f"artifact {artifact.name} in the S3 store: {exc.why}, "
                                  f"the build recorded {artifact.sha256}") from None
