"""Typed settings, read once at start-up from ``LABFLEET_*`` environment variables.

Nothing here does work at import time; call :func:`load_settings` from an entrypoint and
pass the result down.  Secrets have no defaults: the credential key is either given or
generated into the data directory on first start by ``labfleet up``.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "labfleet"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_", extra="ignore")

    # Where things live
    data_dir: Path = Field(default_factory=default_data_dir)
    nats_url: str | None = None
    database_url: str | None = None

    # Bus behaviour
    stream_replicas: int = 1
    max_deliver: int = 5
    redelivery_backoff_s: list[float] = [0.5, 2.0, 5.0, 15.0]
    ack_wait_s: float = 30.0
    consumer_concurrency: int = 32

    # Security: the key that encrypts SSH credentials at rest (Fernet, urlsafe base64)
    credential_key: SecretStr | None = None

    # Gateway
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    session_secret: SecretStr | None = None

    # Lab interaction
    ssh_connect_timeout_s: float = 10.0
    ssh_command_timeout_s: float = 60.0
    monitor_interval_s: float = 5.0
    offline_after_failures: int = 2
    disk_warning_gb: float = 10.0
    #: a QEMU host with CPU, memory or image storage use above this is degraded (no new VMs)
    host_utilization_warning_pct: float = 85.0
    #: a build server with less free disk in its work area is refused at registration
    build_min_disk_gb: float = 5.0
    #: artifacts of builds older than this are deleted unless the build is pinned or tagged
    artifact_retention_days: float = 30.0

    # Telemetry
    log_level: str = "INFO"
    log_json: bool = True
    otlp_endpoint: str | None = None

    def require_nats(self) -> str:
        if not self.nats_url:
            raise RuntimeError(
                "LABFLEET_NATS_URL is not set: point it at a NATS server with JetStream, "
                "or use `labfleet up`, which starts an embedded one"
            )
        return self.nats_url

    def require_database(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "LABFLEET_DATABASE_URL is not set: point it at PostgreSQL "
                "(postgresql://user@host:5432/db), or use `labfleet up`, which starts an embedded one"
            )
        return self.database_url


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
