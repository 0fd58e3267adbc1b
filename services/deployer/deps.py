"""What the deployer's handlers need, wired once in ``main.create``."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    #: consoles still read for a short while after a boot was verified (what the guest
    #: prints right after the marker goes into the boot log); a redeploy or release ends
    #: its environment's tail first instead of waiting for it
    tails: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)

    def keep_tail(self, env_id: uuid.UUID, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tails[env_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.tails.get(env_id) is task:
                del self.tails[env_id]
        task.add_done_callback(done)

    async def end_tail(self, env_id: uuid.UUID) -> None:
        task = self.tails.get(env_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop_tails(self) -> None:
        for env_id in list(self.tails):
            await self.end_tail(env_id)
