"""Typed settings, read once at start-up from ``LABFLEET_*`` environment variables.

Nothing here does work at import time; call :func:`load_settings` from an entrypoint and
pass the result down.  Secrets have no defaults: the credential key is either given or
generated into the data directory on first start by ``labfleet up``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "labfleet"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_", extra="ignore")

    # Where things live
    data_dir: Path = Field(default_factory=default_data_dir)
    nats_url: str | None = None
    #: the NKEY seed this process logs in to NATS with (compose: the service's secret)
    nats_seed_file: Path | None = None
    #: a folder of seeds named ``<service>.nk`` (``labfleet up`` points every service here)
    nats_identity_dir: Path | None = None
    #: the CA that signed the NATS servers' certificates, for TLS to the cluster
    nats_tls_ca_file: Path | None = None
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
    #: the gateway is reached over HTTPS (directly or through a TLS proxy): the session
    #: cookie is then sent only over HTTPS (``Secure``)
    https: bool = False
    #: serve /metrics without an API token even when the gateway listens beyond loopback
    metrics_public: bool = False

    # Lab interaction
    ssh_connect_timeout_s: float = 10.0
    ssh_command_timeout_s: float = 60.0
    monitor_interval_s: float = 5.0
    offline_after_failures: int = 2
    #: a pooled SSH (or libvirt) connection whose host key was last verified longer ago
    #: is verified again with a fresh handshake before it is used; the monitor checks on
    #: every poll, so a swapped key is reported within the offline bound
    host_key_recheck_s: float = 5.0
    disk_warning_gb: float = 10.0
    #: a QEMU host with CPU, memory or image storage use above this is degraded (no new VMs)
    host_utilization_warning_pct: float = 85.0
    #: a build server with less free disk in its work area is refused at registration
    build_min_disk_gb: float = 5.0
    #: repository URL schemes a build may fetch (comma-separated; ``user@host:path`` is
    #: ssh); file:// and ext:: are refused unless listed (services/scheduler/domain/repo_urls.py)
    build_allowed_url_schemes: str = "https,http,git,ssh"
    #: artifacts of builds older than this are deleted unless the build is pinned or tagged
    artifact_retention_days: float = 30.0

    # Where the builder stores new artifacts: "jetstream" (the object store bucket) or
    # "s3" (an S3-compatible store, the LABFLEET_S3_* settings)
    artifact_store: str = "jetstream"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    # Telemetry
    log_level: str = "INFO"
    log_json: bool = True
    otlp_endpoint: str | None = None

    @field_validator("s3_endpoint_url", "s3_bucket", "s3_access_key_id",
                     "s3_secret_access_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # docker-compose passes ``${LABFLEET_S3_BUCKET:-}`` through as "" when unset
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("artifact_store", mode="before")
    @classmethod
    def _known_store(cls, v: object) -> str:
        name = str(v).strip().lower()
        if name not in ("jetstream", "s3"):
            raise ValueError(f"LABFLEET_ARTIFACT_STORE is {v!r}: use jetstream (the JetStream "
                             "object store, the default) or s3 (an S3-compatible store, with "
                             "the LABFLEET_S3_* settings)")
        return name

    def s3_config(self) -> S3Config | None:
        """The S3-compatible store, when the builder stores artifacts there or any
        LABFLEET_S3_* setting names one (artifacts stored there earlier stay readable);
        None when neither.  A half-given configuration names what is missing."""
        given = (self.s3_endpoint_url, self.s3_bucket, self.s3_access_key_id,
                 self.s3_secret_access_key)
        if self.artifact_store != "s3" and not any(given):
            return None
        why = ("LABFLEET_ARTIFACT_STORE is s3" if self.artifact_store == "s3"
               else "some LABFLEET_S3_* settings are given")
        missing = [name for name, value in (
            ("LABFLEET_S3_ENDPOINT_URL", self.s3_endpoint_url),
            ("LABFLEET_S3_BUCKET", self.s3_bucket),
            ("LABFLEET_S3_ACCESS_KEY_ID", self.s3_access_key_id),
            ("LABFLEET_S3_SECRET_ACCESS_KEY", self.s3_secret_access_key)) if not value]
        if missing:
            raise RuntimeError(
                f"{why}, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                "set: give the store's URL (https://s3.example.org), the bucket and the "
                "access key id and secret, or unset the LABFLEET_S3_* settings and "
                "LABFLEET_ARTIFACT_STORE to keep artifacts in the JetStream object store")
        assert self.s3_endpoint_url and self.s3_bucket and self.s3_access_key_id
        assert self.s3_secret_access_key is not None
        url = urlsplit(self.s3_endpoint_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RuntimeError(
                f"LABFLEET_S3_ENDPOINT_URL is {self.s3_endpoint_url!r}: give the store's "
                "http:// or https:// URL (https://s3.eu-west-1.amazonaws.com, "
                "http://127.0.0.1:9000)")
        bucket = self.s3_bucket.strip()
        if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-"
                                                   for c in bucket):
            raise RuntimeError(
                f"LABFLEET_S3_BUCKET is {self.s3_bucket!r}: an S3 bucket name is 3-63 "
                "lower-case letters, digits, '.' and '-'")
        return S3Config(endpoint_url=self.s3_endpoint_url, bucket=bucket,
                        region=self.s3_region, access_key_id=self.s3_access_key_id,
                        secret_access_key=self.s3_secret_access_key)

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


@dataclass(frozen=True)
class S3Config:
    """An S3-compatible store, validated (see :meth:`Settings.s3_config`)."""

    endpoint_url: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: SecretStr


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
