"""The builder's own settings (``LABFLEET_BUILDER_*``), read once at start-up."""
from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class BuilderConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_BUILDER_", extra="ignore")

    #: attempts per allocation when the builder itself dies mid-build (then: failed)
    max_attempts: int = 3
    #: how often a running build tells JetStream it is alive and checks for a cancel;
    #: keep it well under LABFLEET_ACK_WAIT_S
    heartbeat_s: float = 3.0
    #: seconds a killed build gets between SIGTERM and SIGKILL
    kill_grace_s: int = 5
    artifact_bucket: str = "artifacts"
    #: keep build directories on the server after the build (for debugging)
    keep_build_dirs: bool = False
    #: cleaned checkouts kept per repository on a server for the next build to reuse
    #: (0: every build checks out afresh)
    keep_trees: int = 1
    #: a cancel waits this long for the running build to stop before replying
    cancel_wait_s: float = 15.0
    #: how often artifacts past LABFLEET_ARTIFACT_RETENTION_DAYS are looked for and deleted
    retention_interval_s: float = 3600.0
