"""The SSH layer against a real OpenSSH server."""
from __future__ import annotations

import pytest

from labfleet.embedded.ports import free_port
from labfleet.shared.ssh import (
    AuthenticationFailed,
    ConnectionRefused,
    Credentials,
    HostKeyMismatch,
    RemoteCommandFailed,
    SshError,
    SshPool,
    fingerprint,
    probe_host_key,
)

pytestmark = pytest.mark.integration


async def test_probe_pin_and_run(sshd) -> None:  # type: ignore[no-untyped-def]
    key = await probe_host_key(sshd.host, sshd.port)
    assert key == sshd.host_key
    assert fingerprint(key).startswith("SHA256:")
    pool = SshPool()
    creds = Credentials(sshd.username, private_key=sshd.private_key)
    try:
        r = await pool.run(sshd.host, sshd.port, creds, key, ["echo", "a b; c"])
        assert r.stdout == "a b; c\n"  # one argument, not a shell line
        conn1 = await pool.connection(sshd.host, sshd.port, creds, key)
        await pool.run(sshd.host, sshd.port, creds, key, ["true"])
        assert await pool.connection(sshd.host, sshd.port, creds, key) is conn1  # pooled
        with pytest.raises(RemoteCommandFailed) as failed:
            await pool.run(sshd.host, sshd.port, creds, key, ["sh", "-c", "echo oops >&2; exit 3"])
        assert failed.value.exit_status == 3
        assert "oops" in failed.value.stderr
    finally:
        await pool.close()


async def test_specific_errors(sshd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pool = SshPool(connect_timeout=5)
    with pytest.raises(AuthenticationFailed):
        await pool.connect(sshd.host, sshd.port, Credentials(sshd.username, password="wrong"),
                           sshd.host_key)
    with pytest.raises(ConnectionRefused):
        await pool.connect("127.0.0.1", free_port(), Credentials("x", password="y"), sshd.host_key)
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with pytest.raises(HostKeyMismatch) as changed:
        await pool.connect(sshd.host, sshd.port, Credentials(sshd.username, private_key=sshd.private_key), other)
    assert changed.value.presented == fingerprint(sshd.host_key)
    with pytest.raises(SshError, match="no pinned host key"):
        await pool.connect(sshd.host, sshd.port, Credentials(sshd.username, password="x"), None)
