"""A host key swapped under a pooled connection, against a real sshd: the pool notices it
within ``host_key_recheck_s`` (a fresh handshake, not the lost connection), closes the
connection, names both fingerprints; the new key accepted, connections go on.  And the
OpenSSH master's ``known_hosts`` line matches for port 22 as for any other port."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from labfleet.shared.ssh import Credentials, HostKeyMismatch, SshPool, fingerprint
from labfleet.shared.ssh.openssh import known_hosts_line

from tests.sshd import Sshd, start_sshd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: how often the test uses the pool (a monitor poll, a builder's next command)
USE_EVERY_S = 0.25


@pytest.fixture
def own_sshd(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An sshd of this test's own: its key is swapped, so not the session's shared one."""
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()


def creds(server: Sshd) -> Credentials:
    return Credentials(server.username, private_key=server.private_key)


async def until_refused(pool: SshPool, server: Sshd, pinned: str,
                        limit_s: float) -> tuple[float, HostKeyMismatch]:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            await pool.run(server.host, server.port, creds(server), pinned, ["true"])
        except HostKeyMismatch as exc:
            return time.monotonic() - started, exc
        await asyncio.sleep(USE_EVERY_S)
    raise AssertionError(f"the swapped key went unnoticed for {limit_s} s")


async def test_a_swapped_key_is_noticed_within_the_recheck_bound(own_sshd: Sshd) -> None:
    recheck = 1.0
    pinned = own_sshd.host_key
    pool = SshPool(connect_timeout=5, host_key_recheck_s=recheck)
    try:
        await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["true"])
        conn = await pool.connection(own_sshd.host, own_sshd.port, creds(own_sshd), pinned)
        new_key = await asyncio.to_thread(own_sshd.swap_host_key)
        # the established connection itself goes on working: only a fresh handshake tells
        assert (await conn.run("echo still", check=True)).stdout.strip() == "still"
        took, exc = await until_refused(pool, own_sshd, pinned, recheck + 10)
        print(f"\nswapped host key noticed by the pool after {took:.2f} s "
              f"(recheck every {recheck:g} s, used every {USE_EVERY_S:g} s)")
        assert took <= recheck + USE_EVERY_S + 1.0  # + one handshake
        assert exc.code == "host_key_changed"
        assert exc.expected == fingerprint(pinned) and exc.presented == fingerprint(new_key)
        assert f"pinned {fingerprint(pinned)}, presented {fingerprint(new_key)}" in exc.message
        assert "accept-host-key" in exc.hint
        # the connection to the changed host is closed (closing takes a round trip)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.is_closed()
        # still refused on the next use: a new login checks the pinned key too
        with pytest.raises(HostKeyMismatch):
            await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["true"])
        # the admin accepted the new key: it is the pinned one from now on
        out = await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), new_key,
                             ["echo", "accepted"])
        assert str(out.stdout).strip() == "accepted"
    finally:
        await pool.close()


async def test_without_a_recheck_the_old_connection_never_notices(own_sshd: Sshd) -> None:
    """What the recheck is for: a pool that never re-verifies runs on, unaware."""
    pinned = own_sshd.host_key
    pool = SshPool(connect_timeout=5, host_key_recheck_s=None)
    try:
        await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["true"])
        await asyncio.to_thread(own_sshd.swap_host_key)
        await asyncio.sleep(0.5)
        out = await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["echo", "x"])
        assert str(out.stdout).strip() == "x"
    finally:
        await pool.close()


async def test_a_recheck_with_no_handshake_keeps_the_verified_connection(own_sshd: Sshd
                                                                         ) -> None:
    """sshd not taking new connections for a moment is no changed key: the connection
    verified before stays in use."""
    pinned = own_sshd.host_key
    pool = SshPool(connect_timeout=3, host_key_recheck_s=0.0)
    try:
        await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["true"])
        own_sshd.process.terminate()  # the listener goes; the open session's process stays
        own_sshd.process.wait(10)
        out = await pool.run(own_sshd.host, own_sshd.port, creds(own_sshd), pinned, ["echo", "y"])
        assert str(out.stdout).strip() == "y"
    finally:
        await pool.close()


# ---- the OpenSSH master's known_hosts (artifact uploads) -------------------------------


def test_known_hosts_names_port_22_bare_and_others_bracketed() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK comment"
    assert known_hosts_line("10.0.0.5", 22, key) == \
        "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK\n"
    assert known_hosts_line("10.0.0.5", 2222, key) == \
        "[10.0.0.5]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK\n"


@pytest.fixture
def sshd_on_22(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An sshd on port 22 of a loopback address of its own (127.0.22.x: nobody else's)."""
    host = f"127.0.22.{20 + os.getpid() % 200}"
    server = start_sshd(tmp_path / "sshd22", host=host, port=22)
    yield server
    server.stop()


@pytest.mark.parametrize("which", ["port 22", "another port"])
async def test_the_openssh_master_is_used_on_port_22_and_on_others(
        which: str, sshd_on_22: Sshd, own_sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    server = sshd_on_22 if which == "port 22" else own_sshd
    assert (server.port == 22) == (which == "port 22")
    pool = SshPool(connect_timeout=5)
    try:
        master = await pool.bulk(server.host, server.port, creds(server), server.host_key)
        assert master is not None, f"the upload fell back to SFTP: {caplog.text}"
        assert master.alive and master.dir is not None
        assert (master.dir / "known_hosts").read_text() == known_hosts_line(
            server.host, server.port, server.host_key)
        assert "SFTP" not in caplog.text and "host key" not in caplog.text
    finally:
        await pool.close()


async def test_the_sftp_fallback_names_real_fingerprints(own_sshd: Sshd,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """A master refused for a changed key says so with both fingerprints, never empty."""
    pinned = own_sshd.host_key
    new_key = await asyncio.to_thread(own_sshd.swap_host_key)
    pool = SshPool(connect_timeout=5, host_key_recheck_s=None)
    try:
        master = await pool.bulk(own_sshd.host, own_sshd.port, creds(own_sshd), pinned)
        assert master is None
        assert f"pinned {fingerprint(pinned)}, presented {fingerprint(new_key)}" in caplog.text
    finally:
        await pool.close()


async def test_a_host_that_no_longer_has_the_pinned_key_type_is_a_changed_key(
        own_sshd: Sshd) -> None:
    """Pinned RSA, the host now offers ed25519 only: the handshake asking for RSA fails,
    the key it does present is compared, and named."""
    import asyncssh
    from labfleet.shared.ssh import verify_host_key

    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    pinned = rsa.export_public_key("openssh").decode().strip()
    with pytest.raises(HostKeyMismatch) as changed:
        await verify_host_key(own_sshd.host, own_sshd.port, pinned, timeout=5)
    assert changed.value.expected == fingerprint(pinned)
    assert changed.value.presented == fingerprint(own_sshd.host_key)
    # the pinned key of the right type verifies
    assert (await verify_host_key(own_sshd.host, own_sshd.port, own_sshd.host_key)).split()[:2] \
        == own_sshd.host_key.split()[:2]
