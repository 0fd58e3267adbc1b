"""The inventory service against real NATS, PostgreSQL and OpenSSH servers.

Registration is driven exactly as the gateway drives it: a ``RegisterBuildServer``
request on the bus.  Each failure must come back with its own code and leave no resource
behind (only the audit row of the attempt).
"""
from __future__ import annotations

import asyncio
import json
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from cryptography.fernet import Fernet
from labfleet.embedded.ports import free_port
from labfleet.inventory.domain.toolchains import native_arch
from labfleet.inventory.main import create
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.db.database import plain_dsn
from labfleet.shared.events.resource import (
    Arch,
    CredentialsReply,
    GetCredentials,
    GetResource,
    ListResources,
    RegisterBuildServer,
    RegistrationReply,
    RemoveResource,
    ResourceKind,
    ResourceListReply,
    ResourceRegistered,
    ResourceRemoved,
    ResourceReply,
)
from labfleet.shared.secrets import SecretBox
from labfleet.shared.service import Service
from labfleet.shared.ssh import fingerprint
from pydantic import SecretStr

pytestmark = pytest.mark.integration

#: one key for the whole session: every test's inventory shares the schema
CREDENTIAL_KEY = Fernet.generate_key().decode()
HERE_ARCH = native_arch(platform.machine())


@pytest.fixture
async def inventory(settings_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    svc = create(settings_factory(credential_key=CREDENTIAL_KEY, ssh_connect_timeout_s=6.0,
                                  ssh_command_timeout_s=20.0))
    await svc.start()
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


async def ask(nc, command, reply_type, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    msg = await nc.request(command.subject, reveal_secrets_json(command).encode(), timeout=timeout)
    return reply_type.model_validate_json(msg.data)


def registration(sshd, name: str, **overrides) -> RegisterBuildServer:  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "hostname": name, "address": sshd.host, "ssh_port": sshd.port, "username": sshd.username,
        "private_key": SecretStr(sshd.private_key),
        "architectures": [HERE_ARCH] if HERE_ARCH else [], "requested_by": "test-admin"}
    fields.update(overrides)
    return RegisterBuildServer(**fields)  # type: ignore[arg-type]


async def find_event(nc, subject: str, match, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """The first message on ``subject`` (replayed from the stream's start) that ``match``es."""
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                found = match(msg.data)
                if found is not None:
                    return found
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()


async def assert_nothing_stored(pg: asyncpg.Connection, name: str, code: str) -> None:
    assert await pg.fetchval("SELECT count(*) FROM inventory.resources WHERE name = $1", name) == 0
    assert await pg.fetchval("SELECT count(*) FROM inventory.outbox o WHERE convert_from(o.payload, "
                             "'UTF8') LIKE '%' || $1 || '%'", name) == 0
    results = await pg.fetch("SELECT result, detail::text AS detail FROM inventory.audit_log "
                             "WHERE resource_name = $1", name)
    assert [r["result"] for r in results] == [code]


# ---- success ------------------------------------------------------------------------


async def test_register_detects_capabilities_stores_sealed_credentials_and_announces(  # type: ignore[no-untyped-def]
        inventory, nc, pg, sshd, unique):
    name = f"bs-{unique}"
    reply = await ask(nc, registration(sshd, name), RegistrationReply)
    assert reply.ok, reply.error
    view = reply.resource
    assert view is not None and view.name == name and view.kind is ResourceKind.BUILD_SERVER
    caps = view.capabilities
    assert caps is not None
    assert caps.cpu_cores > 0 and caps.memory_mb > 0
    assert caps.disk_total_gb > 0 and 0 <= caps.disk_free_gb <= caps.disk_total_gb
    assert caps.machine == platform.machine()
    assert caps.work_dir.startswith("/")
    gcc = [t for t in caps.toolchains if t.compiler == "gcc"]
    assert gcc and "gcc" in gcc[0].version and any(ch.isdigit() for ch in gcc[0].version)
    assert "make" in caps.tools
    assert view.ssh.host_key == sshd.host_key
    assert view.ssh.host_key_fingerprint == fingerprint(sshd.host_key)

    def registered(data: bytes) -> ResourceRegistered | None:
        event = ResourceRegistered.model_validate_json(data)
        return event if event.resource.resource_id == view.resource_id else None

    event = await find_event(nc, "resource.registered", registered)
    assert event is not None, "resource.registered never reached JetStream"
    assert event.resource.capabilities == caps
    assert b"PRIVATE KEY" not in event.model_dump_json().encode()

    # at rest: sealed, not the key text; opening it with the key gives the key back
    row = await pg.fetchrow("SELECT password_sealed, private_key_sealed FROM inventory.credentials "
                            "WHERE resource_id = $1", view.resource_id)
    assert row is not None and row["password_sealed"] is None
    sealed = bytes(row["private_key_sealed"])
    key_body = sshd.private_key.strip().splitlines()[1]
    assert key_body.encode() not in sealed and b"PRIVATE KEY" not in sealed
    assert SecretBox(CREDENTIAL_KEY).open(sealed) == sshd.private_key

    creds = await ask(nc, GetCredentials(resource_id=view.resource_id), CredentialsReply)
    assert creds.ok and creds.private_key is not None
    assert creds.private_key.get_secret_value() == sshd.private_key
    got = await ask(nc, GetResource(resource_id=view.resource_id), ResourceReply)
    assert got.ok and got.resource == view
    listed = await ask(nc, ListResources(kind=ResourceKind.BUILD_SERVER), ResourceListReply)
    assert view.resource_id in {r.resource_id for r in listed.resources}
    assert "PRIVATE KEY" not in listed.model_dump_json()

    audit = await pg.fetchrow("SELECT actor, result, detail::text AS detail FROM inventory.audit_log "
                              "WHERE resource_id = $1 AND action = 'register_build_server'",
                              view.resource_id)
    assert audit is not None and audit["result"] == "ok" and audit["actor"] == "test-admin"
    assert key_body not in audit["detail"]

    removed = await ask(nc, RemoveResource(resource_id=view.resource_id, requested_by="test-admin"),
                        ResourceReply)
    assert removed.ok
    gone = await find_event(nc, "resource.removed", lambda d: (
        e if (e := ResourceRemoved.model_validate_json(d)).resource_id == view.resource_id else None))
    assert gone is not None and gone.kind is ResourceKind.BUILD_SERVER
    after = await ask(nc, GetResource(resource_id=view.resource_id), ResourceReply)
    assert not after.ok and after.error is not None and after.error.code == "not_found"
    assert await pg.fetchval("SELECT count(*) FROM inventory.credentials WHERE resource_id = $1",
                             view.resource_id) == 0


# ---- each failure: its code, nothing stored -----------------------------------------


async def test_wrong_password_is_authentication_failed(inventory, nc, pg, sshd, unique):  # type: ignore[no-untyped-def]
    name = f"bs-pw-{unique}"
    reply = await ask(nc, registration(sshd, name, private_key=None,
                                       password=SecretStr("not-the-password")), RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "authentication_failed"
    assert reply.error.field == "password"
    assert sshd.username in reply.error.message and reply.error.hint
    assert "not-the-password" not in reply.model_dump_json()
    await assert_nothing_stored(pg, name, "authentication_failed")


async def test_closed_port_is_connection_refused(inventory, nc, pg, sshd, unique):  # type: ignore[no-untyped-def]
    name = f"bs-closed-{unique}"
    port = free_port("127.0.0.1")
    reply = await ask(nc, registration(sshd, name, address="127.0.0.1", ssh_port=port),
                      RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "connection_refused", reply.error
    assert str(port) in reply.error.message and reply.error.field == "ssh_port"
    await assert_nothing_stored(pg, name, "connection_refused")


@pytest.fixture
def unreachable_address(unique: str) -> Iterator[str]:
    """An address on a link into a network namespace of ours where nobody answers ARP.

    The kernel reports "No route to host" after its neighbour probes time out: the same
    thing a host that is down on a real LAN gives.  No packet leaves the namespace pair.
    """
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is missing: cannot build a namespace")
    ns, here, there = f"lfinv{unique[:6]}", f"lfi{unique[:6]}a", f"lfi{unique[:6]}b"
    net = 200 + int(unique[:2], 16) % 50
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns],
        ["ip", "addr", "add", f"169.254.{net}.1/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "-n", ns, "link", "set", there, "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot create a network namespace here ({' '.join(step)}: "
                            f"{done.stderr.strip()})")
        yield f"169.254.{net}.2"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)


async def test_unreachable_address_is_unreachable(inventory, nc, pg, sshd, unique,  # type: ignore[no-untyped-def]
                                                  unreachable_address):
    name = f"bs-unreach-{unique}"
    reply = await ask(nc, registration(sshd, name, address=unreachable_address, ssh_port=22),
                      RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "unreachable", reply.error
    assert unreachable_address in reply.error.message and reply.error.field == "address"
    await assert_nothing_stored(pg, name, "unreachable")


async def test_silent_port_is_timeout_and_blocks_no_other_registration(  # type: ignore[no-untyped-def]
        inventory, nc, pg, sshd, unique):
    """Something accepts the TCP connection but never speaks SSH (a hung sshd)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    name = f"bs-silent-{unique}"
    finished: dict[str, float] = {}

    async def timed(label: str, command: RegisterBuildServer) -> RegistrationReply:
        reply = await ask(nc, command, RegistrationReply)
        finished[label] = time.monotonic()
        return reply

    try:
        silent = asyncio.create_task(timed("silent", registration(
            sshd, name, address="127.0.0.1", ssh_port=port)))
        await asyncio.sleep(0.2)  # the silent one is being probed first
        good = await timed("good", registration(sshd, f"bs-meanwhile-{unique}"))
        reply = await silent
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert good.ok and good.resource is not None, good.error
    # removed before the checks, so that a failure here leaves nothing to the next tests
    await ask(nc, RemoveResource(resource_id=good.resource.resource_id), ResourceReply)
    assert finished["good"] < finished["silent"], "a hung host held up another registration"
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "timeout", reply.error
    await assert_nothing_stored(pg, name, "timeout")


async def test_changed_host_key_is_refused(inventory, nc, pg, sshd, unique):  # type: ignore[no-untyped-def]
    accepted = fingerprint(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
    name = f"bs-hostkey-{unique}"
    reply = await ask(nc, registration(sshd, name, expected_host_key_fingerprint=accepted),
                      RegistrationReply)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "host_key_changed"
    assert reply.error.field == "expected_host_key_fingerprint"
    assert reply.error.details["presented"] == fingerprint(sshd.host_key)
    assert reply.error.details["expected"] == accepted
    await assert_nothing_stored(pg, name, "host_key_changed")

    # the fingerprint the host really has is accepted, with or without its "SHA256:" prefix
    ok = await ask(nc, registration(
        sshd, name, expected_host_key_fingerprint=fingerprint(sshd.host_key).split(":", 1)[1]),
        RegistrationReply)
    assert ok.ok, ok.error
    assert ok.resource is not None
    await ask(nc, RemoveResource(resource_id=ok.resource.resource_id), ResourceReply)


def sshd_with_only(workdir: Path, programs: list[str]):  # type: ignore[no-untyped-def]
    """A dedicated sshd whose sessions find only ``programs`` on their PATH.

    Stands in for a build server where some toolchain is not installed, whatever this
    machine has installed.
    """
    import os

    from tests.sshd import start_sshd

    server = start_sshd(workdir)
    bindir = workdir / "bin"
    bindir.mkdir()
    for program in programs:
        found = shutil.which(program)
        if found:
            os.symlink(found, bindir / program)
    with open(server.workdir / "sshd_config", "a") as config:
        config.write(f"SetEnv PATH={bindir}\n")
    server.restart()
    return server


async def test_declared_architecture_without_toolchain(inventory, nc, pg, unique, tmp_path):  # type: ignore[no-untyped-def]
    server = sshd_with_only(tmp_path / "sshd", ["bash", "sh", "env", "uname", "nproc", "cat",
                                                "df", "pwd", "gcc", "make", "aarch64-linux-gnu-gcc"])
    name = f"bs-riscv-{unique}"
    try:
        reply = await ask(nc, registration(server, name, architectures=[Arch.RISCV64]),
                          RegistrationReply)
    finally:
        server.stop()
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "missing_toolchain", reply.error
    assert reply.error.field == "architectures"
    assert "riscv64" in reply.error.message and "riscv64-linux-gnu-gcc" in reply.error.message
    assert reply.error.details["missing"] == [{"arch": "riscv64",
                                               "compilers": ["riscv64-linux-gnu-gcc"]}]
    await assert_nothing_stored(pg, name, "missing_toolchain")


async def test_riscv64_registration_matches_this_machine(inventory, nc, pg, sshd, unique):  # type: ignore[no-untyped-def]
    """On the shared sshd (this machine) riscv64 succeeds exactly when its compiler exists."""
    name = f"bs-riscv-here-{unique}"
    installed = shutil.which("riscv64-linux-gnu-gcc") is not None
    reply = await ask(nc, registration(sshd, name, architectures=[Arch.RISCV64]),
                      RegistrationReply)
    if installed:
        assert reply.ok, reply.error
        assert reply.resource is not None and reply.resource.capabilities is not None
        riscv = [t for t in reply.resource.capabilities.toolchains if t.arch is Arch.RISCV64]
        assert riscv and riscv[0].compiler == "riscv64-linux-gnu-gcc"
        await ask(nc, RemoveResource(resource_id=reply.resource.resource_id), ResourceReply)
    else:
        assert not reply.ok and reply.error is not None
        assert reply.error.code == "missing_toolchain"
        await assert_nothing_stored(pg, name, "missing_toolchain")


async def test_duplicate_name_and_address(inventory, nc, pg, sshd, unique, tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.sshd import start_sshd

    name = f"bs-dup-{unique}"
    first = await ask(nc, registration(sshd, name), RegistrationReply)
    assert first.ok, first.error
    assert first.resource is not None
    other = start_sshd(tmp_path / "other-sshd")
    try:
        same_name = await ask(nc, registration(other, name), RegistrationReply)
        assert not same_name.ok and same_name.error is not None
        assert same_name.error.code == "duplicate_name" and same_name.error.field == "hostname"
        same_address = await ask(nc, registration(sshd, f"{name}-again"), RegistrationReply)
        assert not same_address.ok and same_address.error is not None
        assert same_address.error.code == "duplicate_address"
        assert await pg.fetchval("SELECT count(*) FROM inventory.resources WHERE name LIKE $1",
                                 f"{name}%") == 1
        assert await pg.fetchval("SELECT count(*) FROM inventory.audit_log WHERE resource_name = "
                                 "$1 AND result = 'duplicate_address'", f"{name}-again") == 1
    finally:
        other.stop()
        await ask(nc, RemoveResource(resource_id=first.resource.resource_id), ResourceReply)


async def test_bad_input_is_answered_with_the_field(inventory, nc, pg, sshd, unique):  # type: ignore[no-untyped-def]
    payload = registration(sshd, f"bs-bad-{unique}").model_dump(mode="json")
    payload["hostname"] = "two words"
    payload["private_key"] = sshd.private_key
    msg = await nc.request(RegisterBuildServer.subject, json.dumps(payload).encode(), timeout=10)
    bad = RegistrationReply.model_validate_json(msg.data)
    assert not bad.ok and bad.error is not None
    assert bad.error.code == "invalid_request" and bad.error.field == "hostname"
    assert "white space" in bad.error.message

    name = f"bs-nocreds-{unique}"
    none = await ask(nc, registration(sshd, name, private_key=None), RegistrationReply)
    assert not none.ok and none.error is not None and none.error.code == "missing_credentials"
    await assert_nothing_stored(pg, name, "missing_credentials")

    name = f"bs-badkey-{unique}"
    garbled = await ask(nc, registration(sshd, name, private_key=SecretStr("not a key")),
                        RegistrationReply)
    assert not garbled.ok and garbled.error is not None
    assert garbled.error.code == "invalid_private_key" and garbled.error.field == "private_key"
    await assert_nothing_stored(pg, name, "invalid_private_key")

    unknown = await ask(nc, RemoveResource(resource_id=uuid.uuid4()), ResourceReply)
    assert not unknown.ok and unknown.error is not None and unknown.error.code == "not_found"
