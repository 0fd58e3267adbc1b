"""The deployer's artifacts: fetched with the shared :class:`ArtifactReader` from the store
and bucket the build recorded, into a local scratch file, checked against the recorded
SHA-256.  Every failure is an :class:`ArtifactMissing` whose message says what to do."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from labfleet.shared.artifacts import ArtifactError, ArtifactReader
from labfleet.shared.events.build import ArtifactInfo
from labfleet.shared.s3 import S3Store


class ArtifactMissing(Exception):
    pass


class ArtifactSource:
    def __init__(self, jetstream: Callable[[], Any] | None, s3: S3Store | None = None) -> None:
        self.reader = ArtifactReader(jetstream, s3, who="deployer")

    async def fetch(self, artifact: ArtifactInfo, into: Path) -> None:
        try:
            await self.reader.fetch(artifact, into)
        except ArtifactError as exc:
            raise ArtifactMissing(str(exc)) from None
