"""Bootstrap of the inventory service: wires its dependencies and its command handlers.

``labfleet run inventory`` and ``labfleet up`` call :func:`create`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from labfleet.shared.secrets import SecretBox
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from .adapters.detection import BuildServerProbe
from .adapters.qemu_probe import QemuHostProbe
from .adapters.repository import ResourceRepository
from .entrypoints import register_commands
from .handlers import InventoryDeps
from .lifecycle_handlers import apply_windows
from .qemu_handlers import QemuHostDeps

MIGRATIONS = Path(__file__).with_name("migrations")
#: how often scheduled maintenance windows are started and ended
WINDOW_CHECK_S = 15.0

log = logging.getLogger(__name__)


async def _windows_loop(deps: InventoryDeps) -> None:
    while True:
        try:
            await apply_windows(deps)
        except Exception:  # noqa: BLE001 - retried at the next tick; the trace is logged
            log.exception("applying maintenance windows failed")
        await asyncio.sleep(WINDOW_CHECK_S)


def create(settings: Settings) -> Service:
    service = Service.create("inventory", settings, migrations=MIGRATIONS)
    assert service.db is not None  # a service with migrations has a database
    deps = InventoryDeps(
        db=service.db,
        resources=ResourceRepository(service.db),
        # refuses to start without LABFLEET_CREDENTIAL_KEY: there is no default key
        secrets=SecretBox.from_settings(settings),
        probe=BuildServerProbe(connect_timeout=settings.ssh_connect_timeout_s,
                               command_timeout=settings.ssh_command_timeout_s),
        min_disk_gb=settings.build_min_disk_gb,
        bus=service.bus,
    )
    qemu = QemuHostDeps(inventory=deps, probe=QemuHostProbe(
        connect_timeout=settings.ssh_connect_timeout_s,
        command_timeout=settings.ssh_command_timeout_s))
    register_commands(service.bus, deps, qemu)
    tasks: list[asyncio.Task[None]] = []

    async def start_windows() -> None:
        tasks.append(asyncio.create_task(_windows_loop(deps), name="maintenance-windows"))

    async def stop_windows() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    service.on_start.append(start_windows)
    service.on_stop.append(stop_windows)
    return service
