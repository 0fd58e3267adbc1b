"""What the builder's handlers need, wired once by ``main.create``."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from labfleet.shared.bus import Bus
from labfleet.shared.db import Database
from labfleet.shared.s3 import S3Store
from labfleet.shared.settings import Settings
from labfleet.shared.ssh import SshPool

from .adapters.artifact_store import ArtifactStore
from .adapters.history import CompileHistories
from .adapters.s3_store import S3ArtifactStore
from .config import BuilderConfig


@dataclass
class BuilderDeps:
    db: Database
    bus: Bus
    ssh: SshPool
    #: where new artifacts go (LABFLEET_ARTIFACT_STORE)
    store: ArtifactStore | S3ArtifactStore
    config: BuilderConfig
    settings: Settings
    #: this process's identity, recorded with each attempt it runs
    instance: str
    #: builds this process is running now: build id → attempt number
    active: dict[uuid.UUID, int] = field(default_factory=dict)
    #: compile line counts and durations, for progress estimates
    histories: CompileHistories | None = None
    #: the S3-compatible store, when configured (it may hold artifacts whichever
    #: store new ones go to)
    s3: S3Store | None = None
