"""What the deployer's handlers need, wired once in ``main.create``."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from labfleet.shared.bus import Bus
from labfleet.shared.db import Database
from labfleet.shared.ssh import SshPool

from .adapters.artifacts import ArtifactSource
from .adapters.libvirt_host import LibvirtHosts
from .config import DeployerConfig


@dataclass
class DeployerDeps:
    db: Database
    bus: Bus
    config: DeployerConfig
    pool: SshPool
    libvirt: LibvirtHosts
    artifacts: ArtifactSource
    scratch: Path
    #: deployments running in this process, so a release can stop one first
    running: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
