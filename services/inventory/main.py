"""Bootstrap of the inventory service: wires its dependencies and its command handlers.

``labfleet run inventory`` and ``labfleet up`` call :func:`create`.
"""
from __future__ import annotations

from pathlib import Path

from labfleet.shared.secrets import SecretBox
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from .adapters.detection import BuildServerProbe
from .adapters.repository import ResourceRepository
from .entrypoints import register_commands
from .handlers import InventoryDeps

MIGRATIONS = Path(__file__).with_name("migrations")


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
    )
    register_commands(service.bus, deps)
    return service
