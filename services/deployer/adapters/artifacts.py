"""Artifacts from the JetStream object store bucket ``artifacts`` (``<build_id>/<name>``),
written to a local scratch file (the store's reader writes in chunks as they arrive)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from labfleet.shared.events.build import ArtifactInfo

BUCKET = "artifacts"


class ArtifactMissing(Exception):
    pass


class ArtifactSource:
    def __init__(self, jetstream: Any) -> None:
        self._jetstream = jetstream
        self._stores: dict[str, Any] = {}

    async def _store(self, bucket: str) -> Any:
        if bucket not in self._stores:
            self._stores[bucket] = await self._jetstream().object_store(bucket)
        return self._stores[bucket]

    async def fetch(self, artifact: ArtifactInfo, into: Path) -> None:
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
