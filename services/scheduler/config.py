"""The scheduler's own settings (``LABFLEET_SCHEDULER_*``), read once at start-up."""
from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABFLEET_SCHEDULER_", extra="ignore")

    #: builds a server runs at once, unless its ``build_slots`` label says otherwise
    build_slots: int = 1
    #: allocations per build: the first plus retries after a lost server
    max_build_attempts: int = 3
    #: below this much free disk a server takes no new build; None = the registration
    #: minimum (``LABFLEET_BUILD_MIN_DISK_GB``); servers paused on low disk stop at
    #: ``LABFLEET_DISK_WARNING_GB``
    min_free_disk_gb: float | None = None
    sample_max_age_s: float = 120.0


#: the label that overrides the slot count of one server
SLOTS_LABEL = "build_slots"
