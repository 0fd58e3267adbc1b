"""A lab build server's host key swapped under the monitor's pooled connection.

The inventory and the monitor run for real (NATS, PostgreSQL, the default poll interval
of 5 s and two failed polls to offline: a 10 s offline bound) and watch a build server
of the emulated lab; the ``host-key-swap`` fault gives its sshd a new key (SIGHUP: the
monitor's connection stays open).  The monitor must report ``host_key_changed`` with both
fingerprints within the offline bound; the admin's accept (``resource.cmd.*``) then lets
the polls go on.  The deployer's kept libvirt connection to a QEMU host is verified
again on the same schedule (``host_key_recheck_s``).  The lab lives in its own directory
(``LABFLEET_HOSTKEY_LAB_DIR``), brought down by the last test.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from cryptography.fernet import Fernet
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.health import HealthChanged, HealthStatus
from labfleet.shared.events.resource import (
    AcceptHostKey,
    Arch,
    CheckHostKey,
    HostKeyReply,
    RegisterBuildServer,
    RegistrationReply,
    RemoveResource,
    ResourceReply,
)
from pydantic import SecretStr

from tests.lab.conftest import _missing

pytestmark = pytest.mark.lab

LAB_DIR = os.environ.get("LABFLEET_HOSTKEY_LAB_DIR", "/var/lib/labfleet-lab-hostkeys")
#: the defaults: a poll every 5 s, offline after 2 failed polls
INTERVAL_S, FAILURES = 5.0, 2
OFFLINE_BOUND_S = INTERVAL_S * FAILURES


@pytest.fixture(scope="module")
def klab() -> dict[str, Any]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from labfleet.lab import lab as labmod
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env(LAB_DIR)
    labmod.up(labmod.LabSpec(build_servers=1, qemu_hosts=1, boards=0), paths,
              say=lambda m: print(f"[lab] {m}"))
    status = labmod.status(paths)
    status["paths"] = paths
    return status


def fault(klab: dict[str, Any], host: str, action: str) -> dict[str, Any]:
    """Inject the fault; the host's entry in the lab's status afterwards."""
    from labfleet.lab import faults, lab as labmod

    paths = klab["paths"]
    state = labmod.load(paths)
    assert state is not None
    print(f"[lab] {faults.inject(state, host, action, paths)}")
    state.save(paths.state_file)
    return next(h for h in labmod.status(paths)["hosts"] if h["name"] == host)


@pytest.fixture(scope="module")
async def services(klab, nats_url, database_url, tmp_path_factory):  # type: ignore[no-untyped-def]
    from labfleet.inventory.main import create as create_inventory
    from labfleet.monitor.main import create as create_monitor
    from labfleet.shared.settings import Settings

    settings = Settings(nats_url=nats_url, database_url=database_url,
                        data_dir=tmp_path_factory.mktemp("hostkey-data"), log_json=False,
                        credential_key=Fernet.generate_key().decode(),
                        monitor_interval_s=INTERVAL_S, offline_after_failures=FAILURES)
    inventory, monitor = create_inventory(settings), create_monitor(settings)
    await inventory.start()
    await monitor.start()
    yield
    await monitor.stop()
    await inventory.stop()


async def ask(nc: Any, command: Any, reply_type: Any, timeout: float = 60) -> Any:
    msg = await nc.request(command.subject, reveal_secrets_json(command).encode(),
                           timeout=timeout)
    return reply_type.model_validate_json(msg.data)


#: answering polls (the lab's small work disk makes a build server degraded)
UP = (HealthStatus.ONLINE, HealthStatus.DEGRADED)


async def next_change(changes: asyncio.Queue[HealthChanged], want: tuple[HealthStatus, ...],
                      limit_s: float) -> HealthChanged:
    deadline = time.monotonic() + limit_s
    while True:
        change = await asyncio.wait_for(changes.get(), max(0.01, deadline - time.monotonic()))
        if change.status in want:
            return change


async def test_a_swapped_key_is_reported_within_the_offline_bound(  # type: ignore[no-untyped-def]
        klab, services, nats_url) -> None:
    h = next(x for x in klab["hosts"] if x["role"] == "build-server")
    nc = await nats.connect(nats_url)
    changes: asyncio.Queue[HealthChanged] = asyncio.Queue()
    resource_id = None

    async def on_change(msg: Any) -> None:
        change = HealthChanged.model_validate_json(msg.data)
        if change.resource_id == resource_id:
            await changes.put(change)

    sub = await nc.subscribe(HealthChanged.subject, cb=on_change)
    try:
        reply = await ask(nc, RegisterBuildServer(
            hostname=f"{h['name']}-hk", address=h["address"], ssh_port=h["ssh_port"],
            username=h["user"], private_key=SecretStr(Path(h["key_path"]).read_text()),
            expected_host_key_fingerprint=h["fingerprint"], architectures=[Arch.X86_64],
            requested_by="lab-test"), RegistrationReply, timeout=120)
        assert reply.ok, reply.error
        resource_id = reply.resource.resource_id
        await next_change(changes, UP, 30)
        old_fp = h["fingerprint"]

        swapped = await asyncio.to_thread(fault, klab, h["name"], "host-key-swap")
        swapped_at = time.monotonic()
        new_fp = swapped["fingerprint"]
        assert new_fp != old_fp and "host-key-swap" in swapped["faults"]
        offline = await next_change(changes, (HealthStatus.OFFLINE,), OFFLINE_BOUND_S + 5)
        took = time.monotonic() - swapped_at
        print(f"\n[measure] swapped host key reported by the monitor after {took:.2f} s "
              f"(poll every {INTERVAL_S:g} s, offline bound {OFFLINE_BOUND_S:g} s)")
        assert took <= OFFLINE_BOUND_S
        assert offline.reason.startswith("host_key_changed")
        assert old_fp in offline.reason and new_fp in offline.reason

        check = await ask(nc, CheckHostKey(resource_id=resource_id), HostKeyReply)
        assert check.ok and (check.pinned_fingerprint, check.presented_fingerprint,
                             check.matches) == (old_fp, new_fp, False)
        refused = await ask(nc, AcceptHostKey(resource_id=resource_id, fingerprint=old_fp,
                                              requested_by="lab-test"), HostKeyReply)
        assert not refused.ok and refused.error.code == "host_key_conflict"
        accepted = await ask(nc, AcceptHostKey(resource_id=resource_id, fingerprint=new_fp,
                                               requested_by="lab-test"), HostKeyReply)
        assert accepted.ok and accepted.accepted, accepted.error
        assert accepted.previous_fingerprint == old_fp
        accepted_at = time.monotonic()
        await next_change(changes, UP, OFFLINE_BOUND_S + 5)
        print(f"[measure] online again {time.monotonic() - accepted_at:.2f} s after the accept")

        restored = await asyncio.to_thread(fault, klab, h["name"], "host-key-restore")
        assert restored["fingerprint"] == old_fp and "host-key-swap" not in restored["faults"]
        await next_change(changes, (HealthStatus.OFFLINE,), OFFLINE_BOUND_S + 5)
    finally:
        await sub.unsubscribe()
        if resource_id is not None:
            await ask(nc, RemoveResource(resource_id=resource_id, requested_by="lab-test"),
                      ResourceReply)
        await nc.close()


async def test_the_deployers_kept_libvirt_connection_is_verified_again(  # type: ignore[no-untyped-def]
        klab, tmp_path) -> None:
    import uuid

    from labfleet.deployer.adapters.libvirt_host import HostAccess, LibvirtFailed, LibvirtHosts
    from labfleet.shared.events.resource import ResourceKind, ResourceView, SshTarget
    from labfleet.shared.ssh import Credentials

    h = next(x for x in klab["hosts"] if x["role"] == "qemu-host")
    recheck = 1.0
    view = ResourceView(resource_id=uuid.uuid4(), kind=ResourceKind.QEMU_HOST, name=h["name"],
                        ssh=SshTarget(address=h["address"], port=h["ssh_port"],
                                      username=h["user"], host_key=h["host_key"]))
    access = HostAccess(view.resource_id, view,
                        Credentials(h["user"], private_key=Path(h["key_path"]).read_text()))
    hosts = LibvirtHosts(tmp_path / "access", 5.0, host_key_recheck_s=recheck)
    try:
        await hosts.domain_names(access)  # opens the connection it keeps
        swapped = await asyncio.to_thread(fault, klab, h["name"], "host-key-swap")
        try:
            await asyncio.sleep(recheck)
            with pytest.raises(LibvirtFailed) as failed:
                await hosts.domain_names(access)
            assert f"pinned {h['fingerprint']}, presented {swapped['fingerprint']}" in \
                failed.value.detail
            assert view.resource_id not in hosts._conns  # closed, not used again
        finally:
            await asyncio.to_thread(fault, klab, h["name"], "host-key-restore")
        assert isinstance(await hosts.domain_names(access), list)  # the pinned key again
    finally:
        await asyncio.to_thread(hosts.close)


def test_zz_lab_down(klab) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab import lab as labmod

    assert labmod.down(klab["paths"], say=lambda m: print(f"[lab] {m}"))
