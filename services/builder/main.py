"""Bootstrap: wire the builder's dependencies and subscribers into a Service."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from labfleet.shared.memory import keep_large_buffers
from labfleet.shared.s3 import S3Store
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings
from labfleet.shared.ssh import SshPool

from .adapters.artifact_store import ArtifactStore
from .adapters.history import CompileHistories
from .adapters.s3_store import S3ArtifactStore
from .config import BuilderConfig
from .deps import BuilderDeps
from .entrypoints import register
from .retention import retention_loop

MIGRATIONS = Path(__file__).with_name("migrations")


def create(settings: Settings, config: BuilderConfig | None = None) -> Service:
    config = config or BuilderConfig()
    keep_large_buffers()  # artifacts pass through in 4 MiB blocks
    svc = Service.create("builder", settings, migrations=MIGRATIONS)
    assert svc.db is not None
    ssh = SshPool(connect_timeout=settings.ssh_connect_timeout_s,
                  command_timeout=settings.ssh_command_timeout_s,
                  host_key_recheck_s=settings.host_key_recheck_s)
    # an S3 store configured (for new artifacts, or holding earlier ones) is checked now:
    # a missing LABFLEET_S3_* setting stops the start with its name
    s3_config = settings.s3_config()
    s3 = S3Store(s3_config) if s3_config is not None else None
    store: ArtifactStore | S3ArtifactStore = (
        S3ArtifactStore(s3) if s3 is not None and settings.artifact_store == "s3"
        else ArtifactStore(lambda: svc.bus.js, config.artifact_bucket))
    deps = BuilderDeps(db=svc.db, bus=svc.bus, ssh=ssh, store=store, config=config,
                       settings=settings, instance=svc.instance,
                       histories=CompileHistories(lambda: svc.bus.js), s3=s3)
    register(svc.bus, deps)
    retention: list[asyncio.Task[None]] = []

    async def start_retention() -> None:
        retention.append(asyncio.create_task(
            retention_loop(deps, config.retention_interval_s), name="artifact-retention"))

    async def stop_retention() -> None:
        for task in retention:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    svc.on_start.append(start_retention)
    if s3 is not None:  # stop hooks run last-added first: closed after everything using it
        svc.on_stop.append(s3.close)
    svc.on_stop.append(stop_retention)
    # stop hooks run last-added first: running builds stop (unacknowledged, so they are
    # picked up again) before their SSH connections close under them
    svc.on_stop.append(ssh.close)
    svc.on_stop.append(svc.bus.dispatcher.cancel_detached)
    return svc
