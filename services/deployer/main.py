"""Bootstrap: wire the deployer's dependencies and subscribers into a Service."""
from __future__ import annotations

from pathlib import Path

from labfleet.shared.s3 import S3Store
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings
from labfleet.shared.ssh import SshPool

from .adapters.artifacts import ArtifactSource
from .adapters.libvirt_host import LibvirtHosts
from .config import DeployerConfig
from .deps import DeployerDeps
from .entrypoints import register

MIGRATIONS = Path(__file__).with_name("migrations")


def create(settings: Settings, config: DeployerConfig | None = None) -> Service:
    config = config or DeployerConfig()
    svc = Service.create("deployer", settings, migrations=MIGRATIONS)
    assert svc.db is not None
    work = settings.data_dir / "deployer"
    pool = SshPool(connect_timeout=config.ssh_connect_timeout_s,
                   command_timeout=config.ssh_command_timeout_s,
                   host_key_recheck_s=settings.host_key_recheck_s)
    libvirt_hosts = LibvirtHosts(work / "libvirt-access", config.ssh_connect_timeout_s,
                                 host_key_recheck_s=settings.host_key_recheck_s)
    s3_config = settings.s3_config()  # a half-given S3 configuration stops the start here
    s3 = S3Store(s3_config) if s3_config is not None else None
    deps = DeployerDeps(db=svc.db, bus=svc.bus, config=config, pool=pool,
                        libvirt=libvirt_hosts, artifacts=ArtifactSource(lambda: svc.bus.js, s3),
                        scratch=work / "scratch")
    register(svc.bus, deps)

    async def prepare() -> None:
        deps.scratch.mkdir(parents=True, exist_ok=True)

    async def close() -> None:
        await deps.stop_tails()
        await pool.close()
        libvirt_hosts.close()
        if s3 is not None:
            await s3.close()

    svc.on_start.append(prepare)
    svc.on_stop.append(close)
    return svc
