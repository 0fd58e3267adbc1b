"""Bootstrap of the monitor service: wires the projection, the poller and the state stores.

``labfleet run monitor`` and ``labfleet up`` call :func:`create`.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from . import handlers
from .adapters.credentials import CredentialCache
from .adapters.health_store import HealthRepository
from .adapters.history import SampleHistory
from .adapters.host_poll import HostPoll
from .adapters.libvirt_vms import LibvirtSessions
from .adapters.projection import ResourceProjection
from .adapters.state_kv import CurrentState
from .domain.health import HealthPolicy
from .entrypoints import register
from .handlers import MonitorDeps
from .polling import Poller, run_every

MIGRATIONS = Path(__file__).with_name("migrations")

PRUNE_EVERY_S = 3600.0
#: re-read the projection now and then, in case another replica handled an event
RESYNC_EVERY_S = 60.0


def poll_timeout(settings: Settings) -> float:
    """Long enough for a slow host, short enough that offline is seen within a few intervals."""
    return min(settings.ssh_connect_timeout_s, max(2 * settings.monitor_interval_s, 3.0))


def create(settings: Settings) -> Service:
    service = Service.create("monitor", settings, migrations=MIGRATIONS)
    assert service.db is not None  # a service with migrations has a database
    db = service.db
    deps = MonitorDeps(
        bus=service.bus, db=db, projection=ResourceProjection(db), history=SampleHistory(db),
        health=HealthRepository(db),
        policy=HealthPolicy(offline_after_failures=settings.offline_after_failures,
                            disk_warning_gb=settings.disk_warning_gb,
                            utilization_warning_pct=settings.host_utilization_warning_pct))
    # every poll re-verifies the host key (HostPoll's default): the poll is the schedule
    host_poll = HostPoll(timeout=poll_timeout(settings))
    vms = LibvirtSessions(timeout=max(poll_timeout(settings), 5.0))
    deps.vms, deps.host_poll = vms, host_poll
    deps.poller = Poller(
        interval=settings.monitor_interval_s, host_poll=host_poll,
        credentials=CredentialCache(service.bus),
        on_outcome=lambda target, outcome: handlers.record_poll(target, outcome, deps),
        vms=vms)
    register(service.bus, deps)
    housekeeping: list[asyncio.Task[None]] = []

    async def resync() -> None:
        assert deps.poller is not None
        deps.poller.sync(await deps.projection.targets())

    async def start() -> None:
        assert deps.poller is not None
        deps.current = await CurrentState.open(service.bus.js, settings.stream_replicas)
        last = await deps.history.latest()
        for resource_id, state in (await deps.health.load()).items():
            deps.states[resource_id] = replace(state, last_sample=last.get(resource_id))
        await deps.history.start()
        await deps.history.prune()
        await resync()
        await deps.poller.start()
        housekeeping.extend([
            asyncio.create_task(run_every(PRUNE_EVERY_S, deps.history.prune, "prune samples")),
            asyncio.create_task(run_every(RESYNC_EVERY_S, resync, "resync projection")),
        ])

    async def stop() -> None:
        for task in housekeeping:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if deps.poller is not None:
            await deps.poller.stop()
        await host_poll.close()
        await vms.close()
        await deps.history.stop()

    service.on_start.append(start)
    service.on_stop.append(stop)
    return service
