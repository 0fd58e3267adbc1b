"""QEMU hosts against the emulated lab: registration over SSH + libvirt, then monitoring.

The inventory and the monitor run for real (NATS, PostgreSQL) and reach the lab's QEMU
hosts — network namespaces with their own sshd and libvirtd — exactly as real hosts.
Faults are real too: a stopped libvirtd, an emulator hidden by a bind mount inside the
host's mount namespace, a full image disk, a pulled link.

The lab lives in its own directory (``LABFLEET_QEMU_LAB_DIR``, default
``/var/lib/labfleet-lab-qemuhosts``) with QEMU hosts only, so these tests never touch a lab
someone else is using; the last test brings it down.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from cryptography.fernet import Fernet
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.health import (
    HEALTH_BUCKET,
    GetHostDetails,
    HealthChanged,
    HealthRecord,
    HealthStatus,
    HostDetailsReply,
    HostSampled,
)
from labfleet.shared.events.resource import (
    Arch,
    RegisterQemuHost,
    RegistrationReply,
    ResourceRegistered,
)
from labfleet.shared.ssh import Credentials
from pydantic import SecretStr

from tests.integration.test_gateway_support import (  # noqa: F401 - gateway: a fixture
    browser_log_in,
    csrf_from_form,
    gateway,
)
from tests.lab.conftest import _missing

pytestmark = pytest.mark.lab

QEMU_LAB_DIR = os.environ.get("LABFLEET_QEMU_LAB_DIR", "/var/lib/labfleet-lab-qemuhosts")
CREDENTIAL_KEY = Fernet.generate_key().decode()
HIDDEN_EMULATOR = "/usr/bin/qemu-system-riscv64"


# ---- the lab --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qlab() -> dict[str, Any]:
    reason = _missing()
    if reason:
        print(f"\n[labfleet tests] QEMU host lab tests skipped: {reason}")
        pytest.skip(reason)
    from labfleet.lab import lab as labmod
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env(QEMU_LAB_DIR)
    started = time.monotonic()
    labmod.up(labmod.LabSpec(build_servers=0, qemu_hosts=2, boards=0), paths,
              say=lambda m: print(f"[lab] {m}"))
    print(f"\n[labfleet tests] QEMU host lab up in {time.monotonic() - started:.1f} s")
    status = labmod.status(paths)
    status["paths"] = paths
    status["by_name"] = {h["name"]: h for h in status["hosts"]}
    return status


def fault(qlab: dict[str, Any], host: str, action: str) -> None:
    from labfleet.lab import faults, lab as labmod

    paths = qlab["paths"]
    state = labmod.load(paths)
    assert state is not None
    print(f"[lab] {faults.inject(state, host, action, paths)}")
    state.save(paths.state_file)


def key_of(qlab: dict[str, Any]) -> str:
    return Path(qlab["hosts"][0]["key_path"]).read_text()


def password_of(qlab: dict[str, Any]) -> str:
    return Path(qlab["hosts"][0]["password_file"]).read_text().strip()


def registration(qlab: dict[str, Any], host: str, name: str, **overrides: Any
                 ) -> RegisterQemuHost:
    h = qlab["by_name"][host]
    fields: dict[str, Any] = {
        "hostname": name, "address": h["address"], "ssh_port": h["ssh_port"],
        "username": h["user"], "private_key": SecretStr(key_of(qlab)),
        "expected_host_key_fingerprint": h["fingerprint"],
        "guest_architectures": [Arch.X86_64, Arch.ARM64, Arch.RISCV64],
        "labels": {"lab": "emulated"}, "requested_by": "lab-test"}
    fields.update(overrides)
    return RegisterQemuHost(**fields)


# ---- services -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def services(qlab, nats_url, database_url, tmp_path_factory):  # type: ignore[no-untyped-def]
    from labfleet.inventory.main import create as create_inventory
    from labfleet.monitor.main import create as create_monitor
    from labfleet.shared.settings import Settings

    settings = Settings(nats_url=nats_url, database_url=database_url,
                        data_dir=tmp_path_factory.mktemp("qemu-data"), log_json=False,
                        credential_key=CREDENTIAL_KEY, ssh_connect_timeout_s=5.0,
                        ssh_command_timeout_s=30.0, monitor_interval_s=1.0,
                        offline_after_failures=2, host_utilization_warning_pct=85.0)
    inventory, monitor = create_inventory(settings), create_monitor(settings)
    await inventory.start()
    await monitor.start()
    yield inventory, monitor
    await monitor.stop()
    await inventory.stop()


@pytest.fixture
async def nc(nats_url: str):  # type: ignore[no-untyped-def]
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def register(nc: Any, command: RegisterQemuHost) -> RegistrationReply:
    msg = await nc.request(command.subject, reveal_secrets_json(command).encode(), timeout=90)
    return RegistrationReply.model_validate_json(msg.data)


def collect(model: Any, into: list[Any]) -> Any:
    async def cb(msg: Any) -> None:
        into.append(model.model_validate_json(msg.data))
    return cb


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---- registration ---------------------------------------------------------------------


async def test_register_detects_kvm_guests_and_libvirt(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    registered: list[ResourceRegistered] = []
    sub = await nc.subscribe(ResourceRegistered.subject, cb=collect(ResourceRegistered, registered))
    started = time.monotonic()
    reply = await register(nc, registration(qlab, "qemu1", name("qemu1")))
    took = time.monotonic() - started
    print(f"\n[measure] QEMU host registration took {took:.2f} s")
    assert reply.ok, reply.error
    view = reply.resource
    assert view is not None and view.qemu is not None
    q = view.qemu
    assert q.cpu_arch == os.uname().machine
    assert q.cpu_cores == os.cpu_count()
    assert q.memory_mb > 0 and q.storage_total_gb > 0
    assert q.image_dir.startswith("/home/lab/")  # the default, made absolute on the host
    assert {g.arch for g in q.guests} >= {Arch.X86_64, Arch.ARM64, Arch.RISCV64}
    assert all(g.version and g.version[0].isdigit() for g in q.guests), q.guests
    assert q.libvirt_version.count(".") == 2
    assert q.libvirt_uri == f"qemu+ssh://lab@{qlab['by_name']['qemu1']['address']}:22/system"
    assert q.allocatable_vcpus == q.cpu_cores
    assert 0 < q.allocatable_memory_mb < q.memory_mb
    # KVM judged by running a guest: the lab's user may not even open /dev/kvm, and this
    # machine's KVM hangs guests; either way the reason says which
    assert q.kvm.reason
    if not qlab["kvm"]:
        assert q.kvm.usable is False, q.kvm
    print(f"[measure] KVM on the lab host: usable={q.kvm.usable} ({q.kvm.reason})")
    assert view.ssh.host_key_fingerprint == qlab["by_name"]["qemu1"]["fingerprint"]
    for _ in range(50):
        if any(e.resource.resource_id == view.resource_id for e in registered):
            break
        await asyncio.sleep(0.1)
    await sub.unsubscribe()
    event = next(e for e in registered if e.resource.resource_id == view.resource_id)
    assert event.resource.qemu == q
    assert "PRIVATE KEY" not in event.model_dump_json()
    services[0].extra_qemu1 = view  # type: ignore[attr-defined]


async def test_wrong_password_is_an_authentication_failure(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    reply = await register(nc, registration(qlab, "qemu2", name("qemu2"), private_key=None,
                                            password=SecretStr("not-the-password")))
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "authentication_failed", reply.error
    assert reply.error.field == "password"


async def test_password_login_reaches_libvirt(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    """The right password works over both SSH and libvirt's libssh transport (refused
    only afterwards, because the address is then checked against the duplicate)."""
    reply = await register(nc, registration(qlab, "qemu2", name("qemu2pw"), private_key=None,
                                            password=SecretStr(password_of(qlab)),
                                            guest_architectures=[Arch.ARM]))
    assert reply.ok, reply.error
    assert reply.resource is not None and reply.resource.qemu is not None
    assert Arch.ARM in {g.arch for g in reply.resource.qemu.guests}
    # remove it again so qemu2 can be registered by the next tests
    from labfleet.shared.events.resource import RemoveResource, ResourceReply

    cmd = RemoveResource(resource_id=reply.resource.resource_id, requested_by="lab-test")
    msg = await nc.request(cmd.subject, cmd.model_dump_json().encode(), timeout=10)
    assert ResourceReply.model_validate_json(msg.data).ok


async def test_changed_host_key_is_refused(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    other = qlab["by_name"]["qemu1"]["fingerprint"]
    reply = await register(nc, registration(qlab, "qemu2", name("qemu2"),
                                            expected_host_key_fingerprint=other))
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "host_key_changed"
    assert reply.error.details["presented"] == qlab["by_name"]["qemu2"]["fingerprint"]


async def test_missing_emulator_is_named(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab import lab as labmod

    state = labmod.load(qlab["paths"])
    assert state is not None
    holder = state.hosts["qemu2"].holder_pid
    # hide the riscv64 emulator inside the host's own mount namespace only
    hide = ["nsenter", "-t", str(holder), "-m", "mount", "--bind", "/dev/null", HIDDEN_EMULATOR]
    subprocess.run(hide, check=True)
    try:
        reply = await register(nc, registration(qlab, "qemu2", name("qemu2")))
    finally:
        subprocess.run(["nsenter", "-t", str(holder), "-m", "umount", HIDDEN_EMULATOR],
                       check=True)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "missing_emulator", reply.error
    assert reply.error.field == "guest_architectures"
    assert reply.error.details["missing"] == [{"arch": "riscv64",
                                               "emulator": "qemu-system-riscv64"}]
    assert "qemu-system-misc" in (reply.error.hint or "")


async def test_libvirt_stopped_is_named(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    from labfleet.lab import lab as labmod, procs, qemu_host

    paths = qlab["paths"]
    state = labmod.load(paths)
    assert state is not None
    host = state.hosts["qemu2"]
    pid = host.pids["libvirtd"]
    os.kill(pid, signal.SIGTERM)
    assert procs.wait_for(lambda: not procs.alive(pid), 15)
    try:
        reply = await register(nc, registration(qlab, "qemu2", name("qemu2")))
    finally:
        host.pids.pop("libvirtd", None)
        qemu_host.start(host, paths)  # the lab's own start (probes emulators again)
        state.save(paths.state_file)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "libvirt_unavailable", reply.error
    assert "does not answer" in reply.error.message
    assert "libvirt-sock" in reply.error.message  # the host's own virsh says why
    assert "start the libvirt daemon" in (reply.error.hint or "")


# ---- monitoring -----------------------------------------------------------------------


def _define_guest(qlab: dict[str, Any], host: str, vm: str) -> None:
    """Start a tiny transient domain (no disk: the firmware waits for a boot device)."""
    from labfleet.shared.ssh.libvirt import open_remote

    h = qlab["by_name"][host]
    conn: Any = open_remote(h["address"], h["ssh_port"], Credentials(h["user"],
                            private_key=key_of(qlab)), h["host_key"])
    try:
        conn.createXML(f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>32</memory>"
                       "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                       "<devices/></domain>", 0)
    finally:
        conn.close()


def _destroy_guest(qlab: dict[str, Any], host: str, vm: str) -> list[str]:
    from labfleet.shared.ssh.libvirt import open_remote

    h = qlab["by_name"][host]
    conn: Any = open_remote(h["address"], h["ssh_port"], Credentials(h["user"],
                            private_key=key_of(qlab)), h["host_key"])
    try:
        conn.lookupByName(vm).destroy()
        return [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()


async def _wait(what: str, check, timeout: float) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"not seen within {timeout:g} s: {what}")


async def test_monitor_samples_running_vms_and_details(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    view = services[0].extra_qemu1  # type: ignore[attr-defined]
    vm = name("lf-probe")
    samples: list[Any] = []
    sub = await nc.subscribe(f"sample.qemu_host.{view.resource_id}",
                             cb=collect(HostSampled, samples))
    await asyncio.to_thread(_define_guest, qlab, "qemu1", vm)
    try:
        started = time.monotonic()
        seen = await _wait(f"a sample listing {vm}", lambda: next(
            (s.sample for s in samples if vm in s.sample.vms), None), 20)
        print(f"\n[measure] running VM in a sample after {time.monotonic() - started:.1f} s")
        assert seen.vm_count == len(seen.vms) >= 1
        assert seen.kind.value == "qemu_host"
        assert seen.disk_total_gb > 0  # the image directory's file system
        msg = await nc.request(GetHostDetails.subject, GetHostDetails(
            resource_id=view.resource_id).model_dump_json().encode(), timeout=20)
        details = HostDetailsReply.model_validate_json(msg.data)
        assert details.ok, details.error
        assert not details.problems, details.problems
        vm_info = next(v for v in details.vms if v.name == vm)
        assert vm_info.state == "running" and vm_info.vcpus == 1 and vm_info.memory_mb == 32
        addresses = [a for i in details.interfaces for a in i.addresses]
        assert f"{qlab['by_name']['qemu1']['address']}/24" in addresses, details.interfaces
    finally:
        left = await asyncio.to_thread(_destroy_guest, qlab, "qemu1", vm)
    assert vm not in left
    samples.clear()
    await _wait("a sample without the destroyed VM", lambda: any(
        s.sample.vm_count is not None and vm not in s.sample.vms for s in samples), 15)
    await sub.unsubscribe()


async def test_full_image_disk_degrades_with_warning(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    """The health record (KV ``health``, what dashboards and the scheduler read) turns
    degraded with a warning naming the storage and its use; the host may already have
    been degraded for CPU (this machine's CPU figures are shared), so no transition is
    required, only the warning."""
    view = services[0].extra_qemu1  # type: ignore[attr-defined]
    kv = await nc.jetstream().key_value(HEALTH_BUCKET)
    fault(qlab, "qemu1", "disk-fill")
    try:
        deadline = time.monotonic() + 30
        record = None
        while time.monotonic() < deadline:
            try:
                entry = await kv.get(str(view.resource_id))
            except nats.js.errors.KeyNotFoundError:  # before the first poll
                await asyncio.sleep(0.5)
                continue
            record = HealthRecord.model_validate_json(entry.value)
            if any(w.startswith("storage_high") for w in record.warnings):
                break
            await asyncio.sleep(0.5)
        assert record is not None and record.status is HealthStatus.DEGRADED, record
        warning = next(w for w in record.warnings if w.startswith("storage_high"))
        assert "over the 85 % limit" in warning
        assert float(warning.split("use ")[1].split(" %")[0]) > 85.0
        assert warning in record.reason
        print(f"\n[measure] degraded warning: {warning}")
    finally:
        fault(qlab, "qemu1", "disk-free")


async def test_link_down_goes_offline_with_last_seen(qlab, services, nc) -> None:  # type: ignore[no-untyped-def]
    view = services[0].extra_qemu1  # type: ignore[attr-defined]
    changes: list[HealthChanged] = []
    sub = await nc.subscribe(HealthChanged.subject, cb=collect(HealthChanged, changes))
    fault(qlab, "qemu1", "link-down")
    cut = time.monotonic()
    try:
        event = await _wait("qemu1 offline", lambda: next(
            (c for c in changes if c.resource_id == view.resource_id
             and c.status is HealthStatus.OFFLINE), None), 40)
        print(f"\n[measure] offline {time.monotonic() - cut:.1f} s after link-down: "
              f"{event.reason}")
        assert event.last_seen is not None
        assert event.previous in (HealthStatus.ONLINE, HealthStatus.DEGRADED)
    finally:
        fault(qlab, "qemu1", "link-up")
    await _wait("qemu1 back", lambda: any(
        c.resource_id == view.resource_id and c.status in (HealthStatus.ONLINE,
                                                           HealthStatus.DEGRADED)
        and c.previous is HealthStatus.OFFLINE for c in changes), 40)
    await sub.unsubscribe()


async def _cli(gateway, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("labfleet")), "qemu-host", *args,
        env={**os.environ, "LABFLEET_URL": gateway.base_url, "LABFLEET_TOKEN": gateway.admin_token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_gateway_api_pages_and_cli(qlab, services, gateway) -> None:  # type: ignore[no-untyped-def]
    h = qlab["by_name"]["qemu2"]
    body = {"hostname": name("gw-qemu2"), "address": h["address"], "username": h["user"],
            "private_key": key_of(qlab), "guest_architectures": ["x86_64", "riscv64"],
            "libvirt_uri": h["libvirt_uri"], "labels": {"lab": "emulated"}}
    async with gateway.anonymous() as browser:
        login = await browser_log_in(browser, "admin", gateway.admin_password)
        assert login.status_code == 303
        # the registration form sent back as a browser would, with its CSRF token
        blank = await browser.get("/qemu-hosts")
        form = await browser.post("/qemu-hosts", data={
            "hostname": name("form"), "address": h["address"], "ssh_port": "22",
            "username": "lab", "auth": "password", "password": "wrong-secret",
            "csrf_token": csrf_from_form(blank.text)})
        assert form.status_code == 422
        assert 'id="error-password"' in form.text, form.text[-3000:]
        assert "wrong-secret" not in form.text  # secrets are never echoed back
    async with gateway.client() as api:
        wrong = await api.post("/api/v1/qemu-hosts", json={**body, "private_key": None,
                                                           "password": "not-the-password"})
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["error"]["code"] == "authentication_failed"
        assert wrong.json()["error"]["field"] == "password"
        r = await api.post("/api/v1/qemu-hosts", json=body)
        assert r.status_code == 201, r.text
        host = r.json()
        assert key_of(qlab) not in r.text
        assert host["qemu"]["kvm"]["reason"] and {g["arch"] for g in host["qemu"]["guests"]} >= {
            "x86_64", "riscv64"}
        assert r.headers["location"] == f"/api/v1/qemu-hosts/{host['id']}"
        listed: dict = {}
        for _ in range(60):
            listed = (await api.get("/api/v1/qemu-hosts")).json()
            mine = next(i for i in listed["items"] if i["id"] == host["id"])
            if mine["vm_count"] is not None:
                break
            await asyncio.sleep(0.25)
        assert mine["vm_count"] == 0 and mine["status"] in ("online", "degraded"), mine
        for window in ("hour", "day", "week"):
            d = await api.get(f"/api/v1/qemu-hosts/{host['id']}", params={"window": window})
            assert d.status_code == 200, d.text
            detail = d.json()
            assert detail["window"] == window and detail["history"], detail.get("history_error")
            assert not detail["problems"], detail["problems"]
        assert any(f"{h['address']}/24" in i["addresses"] for i in detail["interfaces"])
        bad = await api.get(f"/api/v1/qemu-hosts/{host['id']}", params={"window": "year"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_window"
        missing = await api.get(f"/api/v1/qemu-hosts/{uuid.uuid4()}")
        assert missing.status_code == 404

        code, out, err = await _cli(gateway, "list")
        assert code == 0, err
        assert body["hostname"] in out and "STORAGE" in out
        code, out, err = await _cli(gateway, "show", body["hostname"], "--window", "day")
        assert code == 0, err
        assert "KVM not usable" in out and h["address"] in out
        code, out, err = await _cli(gateway, "add", "x", "--address", h["address"], "--user",
                                    "lab", "--guest", "sparc")
        assert code == 1 and "unknown guest architecture sparc" in err

        async with gateway.anonymous() as browser:
            login = await browser_log_in(browser, "admin", gateway.admin_password)
            assert login.status_code == 303
            page = await browser.get("/qemu-hosts")
            assert page.status_code == 200 and body["hostname"] in page.text
            assert f"/qemu-hosts/stream?ids=" in page.text
            detail_page = await browser.get(f"/qemu-hosts/{host['id']}?window=week")
            assert detail_page.status_code == 200
            assert "<polyline" in detail_page.text and h["address"] in detail_page.text

        code, out, err = await _cli(gateway, "remove", body["hostname"])
        assert code == 0, err
        gone = await api.get(f"/api/v1/qemu-hosts/{host['id']}")
        assert gone.status_code == 404


def test_zz_lab_down(qlab) -> None:  # type: ignore[no-untyped-def]
    """Last: the QEMU host lab is removed (set LABFLEET_KEEP_QEMU_LAB=1 to keep it)."""
    if os.environ.get("LABFLEET_KEEP_QEMU_LAB"):
        pytest.skip("LABFLEET_KEEP_QEMU_LAB is set: the lab stays up")
    from labfleet.lab import lab as labmod

    assert labmod.down(qlab["paths"], say=lambda m: print(f"[lab] {m}"))
    assert not Path(QEMU_LAB_DIR, "state.json").exists()
