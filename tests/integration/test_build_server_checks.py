"""Registration checks beyond `--version`, against real NATS, PostgreSQL and OpenSSH.

A dedicated sshd puts a directory first on the session's PATH (``SetEnv``) whose
``aarch64-linux-gnu-gcc`` answers ``--version`` but exits 1 on every compile, and whose
``bison`` exits 1: real programs standing in for a broken toolchain and a broken tool.
"""
from __future__ import annotations

import platform
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from labfleet.inventory.main import create
from labfleet.shared.db.database import plain_dsn
from labfleet.shared.events.resource import Arch, RegistrationReply
from labfleet.shared.service import Service

from tests.sshd import Sshd, start_sshd

from .test_inventory import CREDENTIAL_KEY, ask, registration

pytestmark = pytest.mark.integration

if platform.machine() != "x86_64" or not shutil.which("gcc"):
    pytest.skip("these checks need an x86_64 machine with gcc and make",
                allow_module_level=True)

FAKE_CROSS_GCC = """#!/bin/sh
if [ "$1" = --version ]; then echo 'aarch64-linux-gnu-gcc (Fake) 12.2.0'; exit 0; fi
echo 'cc1: fatal error: this toolchain is broken on purpose' >&2
exit 1
"""
BROKEN_TOOL = "#!/bin/sh\necho 'bison: broken' >&2\nexit 1\n"


@pytest.fixture(scope="module")
def broken_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    work = tmp_path_factory.mktemp("broken-sshd")
    server = start_sshd(work / "sshd")
    fake = work / "fakebin"
    fake.mkdir()
    for name, text in (("aarch64-linux-gnu-gcc", FAKE_CROSS_GCC), ("bison", BROKEN_TOOL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    with open(work / "sshd" / "sshd_config", "a") as config:
        config.write(f"SetEnv PATH={fake}:/usr/local/bin:/usr/bin:/bin\n")
    server.restart()
    yield server
    server.stop()


async def make_inventory(settings_factory, **overrides) -> Service:  # type: ignore[no-untyped-def]
    svc = create(settings_factory(credential_key=CREDENTIAL_KEY, ssh_connect_timeout_s=6.0,
                                  ssh_command_timeout_s=20.0, **overrides))
    await svc.start()
    return svc


@pytest.fixture
async def inventory(settings_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    svc = await make_inventory(settings_factory)
    yield svc
    await svc.stop()


@pytest.fixture
async def nc(nats_url: str):  # type: ignore[no-untyped-def]
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_dsn(database_url))
    yield conn
    await conn.close()


async def nothing_registered(pg: asyncpg.Connection, name: str, code: str) -> None:
    assert await pg.fetchval("SELECT count(*) FROM inventory.resources WHERE name = $1",
                             name) == 0
    results = await pg.fetch("SELECT result FROM inventory.audit_log WHERE resource_name = $1",
                             name)
    assert [r["result"] for r in results] == [code]


def probe_dirs_left() -> list[Path]:
    return sorted(Path("/tmp").glob("labfleet-probe.*"))


async def test_a_cross_compiler_that_cannot_compile_is_refused_naming_the_arch(  # type: ignore[no-untyped-def]
        inventory, nc, pg, broken_sshd, unique):
    before = probe_dirs_left()
    name = f"broken-{unique}"
    reply = await ask(nc, registration(broken_sshd, name,
                                       architectures=[Arch.X86_64, Arch.ARM64]),
                      RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "toolchain_broken", reply.error
    assert "arm64" in reply.error.message and "aarch64-linux-gnu-gcc" in reply.error.message
    assert "broken on purpose" in reply.error.message
    assert "x86_64" not in [b["arch"] for b in reply.error.details["broken"]]
    assert reply.error.field == "architectures"
    await nothing_registered(pg, name, "toolchain_broken")
    assert probe_dirs_left() == before, "the probe's temporary directory was left behind"


async def test_the_same_host_registers_when_only_the_working_arch_is_declared(  # type: ignore[no-untyped-def]
        inventory, nc, broken_sshd, unique):
    reply = await ask(nc, registration(broken_sshd, f"x86-only-{unique}",
                                       architectures=[Arch.X86_64]), RegistrationReply)
    assert reply.ok, reply.error
    from labfleet.shared.events.resource import RemoveResource, ResourceReply
    assert reply.resource is not None
    removed = await ask(nc, RemoveResource(resource_id=reply.resource.resource_id),
                        ResourceReply)
    assert removed.ok


async def test_kernel_configs_need_bison_and_say_so(  # type: ignore[no-untyped-def]
        inventory, nc, pg, broken_sshd, unique):
    name = f"nobison-{unique}"
    reply = await ask(nc, registration(broken_sshd, name, architectures=[Arch.X86_64],
                                       build_configs=["tinyconfig"]), RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "missing_build_tool", reply.error
    assert reply.error.details["missing"] == ["bison"]
    assert "bison" in reply.error.message and "tinyconfig" in reply.error.message
    await nothing_registered(pg, name, "missing_build_tool")


async def test_too_little_free_disk_is_refused(settings_factory, nc, pg, sshd, unique
                                               ) -> None:  # type: ignore[no-untyped-def]
    svc = await make_inventory(settings_factory, build_min_disk_gb=100_000)
    try:
        name = f"smalldisk-{unique}"
        reply = await ask(nc, registration(sshd, name), RegistrationReply)
    finally:
        await svc.stop()
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "insufficient_disk", reply.error
    assert "100000 GB" in reply.error.message and reply.error.details["free_gb"] > 0
    await nothing_registered(pg, name, "insufficient_disk")


async def test_a_changed_host_key_takes_the_server_offline_and_is_announced(  # type: ignore[no-untyped-def]
        settings_factory, nc, tmp_path, unique) -> None:
    import asyncio
    import contextlib
    import json
    import os
    import signal
    import subprocess

    from labfleet.monitor.main import create as create_monitor
    from labfleet.shared.events.health import HealthChanged, HealthStatus

    server = start_sshd(tmp_path / "rekeyed")
    settings = settings_factory(credential_key=CREDENTIAL_KEY, monitor_interval_s=0.5,
                                offline_after_failures=5)
    inventory, monitor = create(settings), create_monitor(settings)
    await inventory.start()
    await monitor.start()
    seen: list[HealthChanged] = []

    async def on_change(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(HealthChanged.model_validate(json.loads(msg.data)))

    sub = await nc.jetstream().subscribe("health.changed", cb=on_change, ordered_consumer=True)
    try:
        reply = await ask(nc, registration(server, f"rekey-{unique}"), RegistrationReply)
        assert reply.ok, reply.error
        rid = reply.resource.resource_id

        def status_of(s: HealthStatus) -> HealthChanged | None:
            return next((e for e in seen if e.resource_id == rid and e.status == s), None)

        async with asyncio.timeout(20):
            while status_of(HealthStatus.ONLINE) is None and status_of(
                    HealthStatus.DEGRADED) is None:
                await asyncio.sleep(0.1)
        # the host is reinstalled (or impersonated): same address, another key
        key = server.workdir / "host_key"
        key.unlink()
        (server.workdir / "host_key.pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        # a reinstalled host drops every session: end this sshd's per-connection children
        # (they would otherwise keep the monitor's pooled connection alive)
        sessions = subprocess.run(["pgrep", "-P", str(server.process.pid)],
                                  capture_output=True, text=True).stdout.split()
        server.stop()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
        server.restart()
        async with asyncio.timeout(20):
            while status_of(HealthStatus.OFFLINE) is None:
                await asyncio.sleep(0.1)
        offline = status_of(HealthStatus.OFFLINE)
        assert offline is not None and offline.reason.startswith("host_key_changed")
        # at once, not after offline_after_failures (5) polls
        assert "polls failed" not in offline.reason
        from labfleet.shared.events.resource import RemoveResource, ResourceReply
        assert (await ask(nc, RemoveResource(resource_id=rid), ResourceReply)).ok
    finally:
        await sub.unsubscribe()
        await monitor.stop()
        await inventory.stop()
        server.stop()
