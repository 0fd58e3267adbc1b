"""Bootstrap: wire the alerter's dependencies, subscribers and delivery worker."""
from __future__ import annotations

from pathlib import Path

from labfleet.shared.secrets import SecretBox
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from .adapters.email import SmtpSender
from .adapters.webhook import WebhookSender
from .config import AlerterConfig, SmtpConfig
from .deliveries import DeliveryWorker
from .deps import AlerterDeps
from .entrypoints import register

MIGRATIONS = Path(__file__).with_name("migrations")


def create(settings: Settings, config: AlerterConfig | None = None,
           smtp: SmtpConfig | None = None) -> Service:
    config = config or AlerterConfig()
    smtp = smtp or SmtpConfig()
    svc = Service.create("alerter", settings, migrations=MIGRATIONS)
    assert svc.db is not None
    box = SecretBox.from_settings(settings) if settings.credential_key is not None else None
    deps = AlerterDeps(db=svc.db, config=config, box=box)
    register(svc.bus, deps)
    worker = DeliveryWorker(deps, SmtpSender(smtp), WebhookSender(config.webhook_timeout_s))
    svc.on_start.append(worker.start)
    svc.on_stop.append(worker.stop)
    return svc
