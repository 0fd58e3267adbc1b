"""The deployer's own settings (``LABFLEET_DEPLOYER_*``), read once at start-up."""
from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class DeployerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_DEPLOYER_", extra="ignore")

    #: how often a waiting deployment tells JetStream it is still at work
    progress_every_s: float = 5.0
    #: console text kept after the verdict (what the guest prints next, e.g. a shell prompt)
    console_grace_s: float = 0.5
    builder_timeout_s: float = 10.0
    ssh_connect_timeout_s: float = 10.0
    ssh_command_timeout_s: float = 120.0
    #: a deployment taken up this many times (the deployer died during each) fails
    max_attempts: int = 3
