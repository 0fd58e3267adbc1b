"""Everything a request handler may use, wired once in ``main.create``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.templating import Jinja2Templates
from labfleet.shared.bus import Bus
from labfleet.shared.s3 import S3Store
from labfleet.shared.settings import Settings

from .adapters.accounts import Accounts
from .adapters.live import LiveHub
from .adapters.state import SharedState
from .login_throttle import LoginThrottle
from .metrics import Metrics


@dataclass
class Gateway:
    settings: Settings
    bus: Bus
    accounts: Accounts
    state: SharedState
    hub: LiveHub
    templates: Jinja2Templates
    metrics: Metrics
    #: the AsyncAPI document, rendered once on first request
    asyncapi: dict[str, Any] | None = field(default=None)
    #: the S3-compatible artifact store, when configured (LABFLEET_S3_*)
    s3: S3Store | None = None
    #: failed log-ins by user name and client address
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
