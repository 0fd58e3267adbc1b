"""What the alerter's handlers and worker run on, wired once in ``main.create``."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from labfleet.shared.db import Database
from labfleet.shared.secrets import SecretBox

from .config import AlerterConfig


@dataclass
class AlerterDeps:
    db: Database
    config: AlerterConfig
    #: seals webhook secrets; None without LABFLEET_CREDENTIAL_KEY (webhook secrets refused)
    box: SecretBox | None
    #: set after a transaction queued deliveries, so the worker sends them at once
    deliveries_queued: asyncio.Event = field(default_factory=asyncio.Event)
