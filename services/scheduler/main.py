"""Bootstrap: wire the scheduler's dependencies and subscribers into a Service."""
from __future__ import annotations

from pathlib import Path

from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from .config import SchedulerConfig
from .domain.env_placement import EnvPolicy
from .domain.placement import PlacementPolicy
from .entrypoints import register
from .env_entrypoints import register_env
from .env_handlers import EnvDeps, EnvPlacementConfig
from .domain.repo_urls import allowed_schemes
from .handlers import SchedulerDeps

MIGRATIONS = Path(__file__).with_name("migrations")


def create(settings: Settings, config: SchedulerConfig | None = None) -> Service:
    config = config or SchedulerConfig()
    svc = Service.create("scheduler", settings, migrations=MIGRATIONS)
    assert svc.db is not None
    min_disk = config.min_free_disk_gb
    # under the registration minimum no server builds; under the warning level only those
    # the admin set to pause on low disk
    policy = PlacementPolicy(
        min_free_disk_gb=settings.build_min_disk_gb if min_disk is None else min_disk,
        disk_warning_gb=settings.disk_warning_gb,
        sample_max_age_s=config.sample_max_age_s)
    register(svc.bus, SchedulerDeps(
        db=svc.db, config=config, policy=policy,
        allowed_url_schemes=allowed_schemes(settings.build_allowed_url_schemes)))
    env_config = EnvPlacementConfig()
    register_env(svc.bus, EnvDeps(
        db=svc.db, bus=svc.bus, builder_timeout_s=env_config.builder_timeout_s,
        policy=EnvPolicy(max_utilization_pct=env_config.max_utilization_pct)))
    return svc
