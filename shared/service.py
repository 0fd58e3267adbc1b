"""The frame every service runs in: settings, logging, bus, database, outbox, liveness.

A service module exposes ``create(settings) -> Service``; it registers its handlers on
``service.bus`` and may add start/stop hooks.  ``labfleet run <name>`` and ``labfleet up``
both end up in :meth:`Service.run`, so a service behaves the same alone or in the set.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .bus import Bus
from .db import Database, OutboxRelay, migrate
from .events.system import Ping, Pong
from .settings import Settings
from .telemetry import setup_logging, setup_tracing

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]

VERSION = "0.1.0"


@dataclass
class Service:
    name: str
    settings: Settings
    bus: Bus
    #: the folder of Alembic revisions; None for services without a schema
    migrations: Path | None = None
    db: Database | None = None
    relay: OutboxRelay | None = None
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def create(cls, name: str, settings: Settings, *, migrations: Path | None = None,
               db_pool_size: int = 10) -> Service:
        bus = Bus.create(settings, name)
        db = Database(settings.require_database(), name, max_size=db_pool_size) if migrations else None
        svc = cls(name=name, settings=settings, bus=bus, migrations=migrations, db=db)

        @bus.commands.subscriber(f"system.cmd.ping.{name}", title=f"{name}:ping")
        async def ping(_: Ping) -> Pong:
            return Pong(service=name, instance=svc.instance, started_at=svc.started_at,
                        version=VERSION)

        return svc

    async def start(self) -> None:
        if self.db is not None and self.migrations is not None:
            await migrate(self.db.url, self.db.schema, self.migrations)
            await self.db.connect()
        self.bus.include()
        await self.bus.start()
        if self.db is not None:
            self.relay = OutboxRelay(self.db, self.bus.js)
            await self.relay.start()
        for hook in self.on_start:
            await hook()
        log.info("service started", extra={"instance": self.instance})

    async def stop(self) -> None:
        for hook in reversed(self.on_stop):
            with contextlib.suppress(Exception):
                await hook()
        await self.bus.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.db is not None:
            await self.db.close()
        log.info("service stopped")

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM; ``ready`` is called once the service has started."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if ready is not None:
            ready()
        try:
            await stop.wait()
        finally:
            await self.stop()


def run_service(name: str, factory: Callable[[Settings], Service], settings: Settings) -> None:
    setup_logging(settings, name)
    setup_tracing(settings, name)
    asyncio.run(factory(settings).run())
