"""Large files through the OpenSSH client (``labfleet.shared.ssh.openssh``) against a real
sshd: the bytes, the key kept off the disk, the errors a person can act on, a master that
dies and comes back, the SFTP fallback, and no ``ssh`` process left behind."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from labfleet.builder.adapters.artifact_store import ArtifactStore
from labfleet.builder.adapters.remote import BuildHost
from labfleet.builder.domain.errors import BuildError
from labfleet.shared.ssh import AuthenticationFailed, HostKeyMismatch, RemoteCommandFailed, openssh
from labfleet.shared.ssh.openssh import OpenSshMaster, PipeReader

from tests.artifact_helpers import build_host, make_attempt, server_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # gone meanwhile
            if text in cmdline:
                found.append(f"{proc.name} {cmdline}")
    return found


async def read_all(reader: Any, n: int = 1 << 20) -> bytes:
    out = bytearray()
    while block := await reader.read(n):
        out += block
    return bytes(out)


async def master_of(host: BuildHost) -> OpenSshMaster:
    a = host.access
    master = await host.pool.bulk(a.host, a.port, a.creds, a.host_key)
    assert master is not None, "the test sshd takes key logins: a master should be up"
    return master


async def test_a_file_comes_through_openssh_and_the_key_never_touches_disk(sshd: Any) -> None:
    data = os.urandom(9 * 1024 * 1024 + 333)
    path = server_file(sshd, "Image-openssh", data)
    async with build_host(sshd, "openssh") as host:
        host.prepare_transfer()
        master = await master_of(host)
        assert master.dir is not None
        private = master.dir
        # the private directory holds the pinned host key and the socket, no key file
        assert sorted(p.name for p in private.iterdir()) == ["control", "known_hosts"]
        assert oct(private.stat().st_mode & 0o777) == "0o700"
        assert sshd.private_key.strip().splitlines()[1] not in "".join(
            p.read_text(errors="replace") for p in private.iterdir() if p.is_file())
        async with host.open_file(str(path)) as f:
            assert isinstance(f, PipeReader)
            # full blocks until the last one
            first = await f.read(4 << 20)
            assert len(first) == 4 << 20
            got = first + await read_all(f, 4 << 20)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert processes_mentioning(str(private)), "the master keeps running between files"
    # closing the pool ends the master and removes its directory
    assert not private.exists()
    assert processes_mentioning(str(private)) == []


async def test_a_missing_file_fails_with_the_servers_words(sshd: Any, nc: Any,
                                                           unique: str) -> None:
    async with build_host(sshd, "openssh-missing") as host:
        missing = str(sshd.workdir / "files" / "no-such-Image")
        with pytest.raises(RemoteCommandFailed) as failed:
            async with host.open_file(missing) as f:
                await read_all(f)
        assert failed.value.exit_status == 1
        assert "No such file" in failed.value.message and missing in failed.value.message

        # the builder's upload turns it into a build error saying what could not be read
        bucket = f"test-openssh-{unique}"
        attempt = await make_attempt(nc, sshd, host, ArtifactStore(nc.jetstream, bucket=bucket))
        try:
            with pytest.raises(BuildError) as build_failed:
                await attempt.upload([(missing, "Image")])
        finally:
            await nc.jetstream().delete_object_store(bucket)
        assert build_failed.value.code == "artifact_unreadable"
        assert "no-such-Image" in str(build_failed.value)


async def test_a_killed_master_is_started_again(sshd: Any) -> None:
    data = os.urandom(300_000)
    path = server_file(sshd, "zImage-openssh", data)
    async with build_host(sshd, "openssh-killed") as host:
        first = await master_of(host)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        await first.process.wait()
        assert not first.alive
        async with host.open_file(str(path)) as f:
            assert isinstance(f, PipeReader)
            assert await read_all(f) == data
        second = await master_of(host)
        assert second is not first and second.alive
        await asyncio.sleep(0.2)  # the dead master's directory is removed in the background
        assert first.dir is None


async def test_without_an_openssh_client_files_come_over_sftp(
        sshd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openssh, "ssh_binary", lambda: None)
    data = os.urandom(200_000)
    path = server_file(sshd, "vmlinux-sftp", data)
    async with build_host(sshd, "openssh-absent") as host:
        async with host.open_file(str(path)) as f:
            assert not isinstance(f, PipeReader)
            assert await read_all(f) == data


async def test_openssh_refuses_a_wrong_host_key_and_a_wrong_private_key(
        sshd: Any, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    other_public = (tmp_path / "k.pub").read_text().strip()
    other_private = (tmp_path / "k").read_text()

    wrong_host = OpenSshMaster(sshd.host, sshd.port, sshd.username, sshd.private_key,
                               other_public, connect_timeout=5)
    with pytest.raises(HostKeyMismatch):
        await wrong_host.start()
    assert not wrong_host.alive and wrong_host.dir is None

    wrong_key = OpenSshMaster(sshd.host, sshd.port, sshd.username, other_private,
                              sshd.host_key, connect_timeout=5)
    with pytest.raises(AuthenticationFailed) as failed:
        await wrong_key.start()
    assert "Permission denied" in failed.value.detail
    assert "rejected the credentials" in failed.value.message
    assert not wrong_key.alive and wrong_key.dir is None


async def test_leaving_a_file_half_read_ends_its_transfer(sshd: Any) -> None:
    """A failed upload stops reading: the remote ``cat`` goes, the pipe is closed, and the
    master carries on with the next file."""
    data = os.urandom(64 * 1024 * 1024)
    path = server_file(sshd, "vmlinux-half", data)
    async with build_host(sshd, "openssh-half") as host:
        async with asyncio.timeout(20):
            async with host.open_file(str(path)) as f:
                assert isinstance(f, PipeReader)
                assert len(await f.read(1 << 20)) == 1 << 20
                process = f.process
            assert process.returncode is not None and f.fd == -1
            # the server's end goes too ("server" processes run on this machine)
            while processes_mentioning(f"cat -- {path}"):
                await asyncio.sleep(0.05)
        async with host.open_file(str(path)) as again:
            assert hashlib.sha256(await read_all(again, 8 << 20)).digest() == \
                hashlib.sha256(data).digest()


async def test_without_its_master_a_client_cannot_log_in_by_itself(sshd: Any) -> None:
    """A client whose master died must not find another way in (a key of ~/.ssh)."""
    master = OpenSshMaster(sshd.host, sshd.port, sshd.username, sshd.private_key,
                           sshd.host_key, connect_timeout=5)
    await master.start()
    try:
        assert master.process is not None
        ok = subprocess.run(master.client_argv(["echo", "through-the-master"]),
                            capture_output=True, text=True, timeout=20)
        assert ok.returncode == 0 and ok.stdout == "through-the-master\n"
        master.process.kill()
        await master.process.wait()
        refused = subprocess.run(master.client_argv(["echo", "alone"]),
                                 capture_output=True, text=True, timeout=20)
        assert refused.returncode == 255 and "alone" not in refused.stdout
        assert "Permission denied" in refused.stderr
    finally:
        await master.close()


HOLDER = r"""
import asyncio, sys
from labfleet.shared.ssh.openssh import OpenSshMaster

host, port, user, key_file, host_key = sys.argv[1:6]

async def main():
    master = OpenSshMaster(host, int(port), user, open(key_file).read(), host_key)
    await master.start()
    print(master.dir, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_service_leaves_no_master_behind(sshd: Any) -> None:
    """SIGKILL gives a service no chance to close its masters: the kernel ends them."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, sshd.host, str(sshd.port), sshd.username,
         str(sshd.private_key_path), sshd.host_key],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        private = (await asyncio.to_thread(holder.stdout.readline)).strip()
        assert private and processes_mentioning(private), "the master should be running"
    finally:
        holder.kill()
        holder.wait()
    for _ in range(100):
        if not processes_mentioning(private):
            break
        await asyncio.sleep(0.05)
    assert processes_mentioning(private) == []
    # the killed service could not remove its directory: the next start does
    assert Path(private).exists()
    assert Path(private) in openssh.sweep_stale_dirs(Path(private).parent)
    assert not Path(private).exists()


def test_directories_of_killed_services_are_swept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{openssh.DIR_PREFIX}{gone.pid}-abc123"
    live = tmp_path / f"{openssh.DIR_PREFIX}{os.getpid()}-def456"
    foreign = tmp_path / f"{openssh.DIR_PREFIX}notapid"
    for d in (stale, live, foreign):
        d.mkdir()
        (d / "known_hosts").write_text("[127.0.0.1]:22 ssh-ed25519 AAAA\n")
    assert openssh.sweep_stale_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()
