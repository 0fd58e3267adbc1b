"""The alerter's own settings, read once at start-up.

``LABFLEET_ALERTER_*`` steer delivery; ``LABFLEET_SMTP_*`` say how to send email::

    LABFLEET_SMTP_HOST=mail.example.org LABFLEET_SMTP_PORT=587 LABFLEET_SMTP_STARTTLS=true
    LABFLEET_SMTP_USER=labfleet LABFLEET_SMTP_PASSWORD=... LABFLEET_SMTP_FROM=lab@example.org
"""
from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AlerterConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_ALERTER_", extra="ignore")

    #: seconds before retry 1, 2, 3 … of a failed delivery (the last value repeats)
    delivery_backoff_s: list[float] = [5.0, 30.0, 120.0, 600.0, 1800.0]
    #: a delivery is given up (status failed) after this many attempts
    max_delivery_attempts: int = 10
    #: a target hears about one alert at most once per this many seconds; changes in
    #: between are folded into the next message (a flapping host does not flood a mailbox)
    notify_interval_s: float = 120.0
    #: an alert raised again within this many seconds of its resolve is reopened, not new
    flap_window_s: float = 600.0
    #: how often the worker looks for deliveries whose retry time has come
    poll_s: float = 1.0
    webhook_timeout_s: float = 10.0
    #: how long a worker may hold a delivery before another may take it over
    delivery_lease_s: float = 60.0
    #: link put into messages, e.g. ``https://lab.example.org/alerts``
    dashboard_url: str = ""


class SmtpConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_SMTP_", extra="ignore",
                                      populate_by_name=True)

    host: str | None = None
    port: int = 25
    user: str | None = None
    password: SecretStr | None = None
    sender: str = Field(default="labfleet@localhost", alias="LABFLEET_SMTP_FROM")
    starttls: bool = False
    timeout_s: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.host)
