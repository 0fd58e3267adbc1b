"""Bulk reads through the system's OpenSSH client, beside the pooled asyncssh connection.

asyncssh handles every SSH packet in Python: reading a 200 MB kernel image over SFTP costs
the reading process about 1.5 CPU-seconds (sshd never sends more than 32 KiB per packet),
which caps an artifact upload near half of what OpenSSH's own ``sftp`` reaches on the same
server.  OpenSSH does that work in C.  So large files come through an OpenSSH connection
master (``ssh -M``, kept open like the pooled connection) and ``ssh -S <socket> host cat
FILE``, whose standard output is a pipe into this process; everything else (commands,
live output, globs) stays on asyncssh.

The private key never touches a disk: it lies in an anonymous memory file
(``memfd_create``, mode 0600) that the master reads through ``/proc/<this pid>/fd/N``
(OpenSSH closes inherited descriptors, so the path names this process's) and that is
closed as soon as the master has logged in.  The host key is the pinned one, in a
``known_hosts`` file of a private directory with the control socket; ``~/.ssh/config``,
agents and other identities are ignored.  Password-only servers, or a machine without
``ssh``, use SFTP (:meth:`available` says which).

The master runs under ``setpriv --pdeathsig`` where util-linux has it, so a killed service
leaves no ``ssh`` process behind.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from .errors import (
    AuthenticationFailed,
    ConnectionRefused,
    ConnectTimeout,
    HostKeyMismatch,
    HostUnreachable,
    RemoteCommandFailed,
    SshError,
)

log = logging.getLogger(__name__)

#: the pipe from ``ssh`` to this process (Linux's default is 64 KiB)
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: an exit status of 255 is ssh's own failure (connection, authentication), not the command's
SSH_FAILED = 255


#: the private directories of masters: ``labfleet-ssh-<pid of the service>-<random>``
DIR_PREFIX = "labfleet-ssh-"
_swept = False


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH (and libssh) name ``host:port`` in ``known_hosts``: the bare host for
    port 22 (``[host]:22`` is never looked up), ``[host]:port`` for any other."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """The ``known_hosts`` line pinning ``host_key`` (its comment left out) for host:port."""
    return f"{known_hosts_name(host, port)} {' '.join(host_key.split()[:2])}\n"


def ssh_binary() -> str | None:
    return shutil.which("ssh")


def sweep_stale_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the private directories of masters whose service is no longer running (it
    was killed before it could); once per process unless ``parent`` is given."""
    global _swept
    if parent is None:
        if _swept:
            return []
        _swept = True
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its service runs (or the pid is someone else's now): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's process
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _classify_stderr(host: str, port: int, username: str, stderr: str,
                     timeout: float) -> SshError:
    text = stderr.strip()
    low = text.lower()
    if "host key verification failed" in low or "remote host identification" in low:
        # OpenSSH names no fingerprints here: the pool finds them (``_why_key_refused``)
        return HostKeyMismatch(host, port, "OpenSSH refused the pinned host key")
    if "permission denied" in low:
        return AuthenticationFailed(host, port, text, username=username)
    if "connection refused" in low:
        return ConnectionRefused(host, port, text)
    if "timed out" in low:
        return ConnectTimeout(host, port, f"{timeout:g}s")
    if "no route to host" in low or "could not resolve" in low or "unreachable" in low:
        return HostUnreachable(host, port, text)
    return SshError(host, port, text or "ssh exited without a message")


class OpenSshMaster:
    """One OpenSSH connection master for (host, port, user), its control socket private."""

    def __init__(self, host: str, port: int, username: str, private_key: str, host_key: str,
                 *, connect_timeout: float = 10.0, keepalive_s: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._private_key = private_key
        self._host_key = host_key
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self.dir: Path | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._said: asyncio.Task[None] | None = None
        #: the ssh client found on the PATH at start
        self._ssh = "ssh"

    @staticmethod
    def available(private_key: str | None) -> bool:
        """Key-authenticated, on a machine with an OpenSSH client and memory files."""
        return bool(private_key) and ssh_binary() is not None and hasattr(os, "memfd_create")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _options(self) -> list[str]:
        assert self.dir is not None
        return [
            "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "IdentityAgent=none",
            "-o", "IdentitiesOnly=yes",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o", f"ServerAliveInterval={max(1, round(self.keepalive_s))}",
            "-o", "ServerAliveCountMax=3",
            # AES-GCM first, as the pooled connection: the CPU does it in hardware
            "-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
            "-o", "LogLevel=ERROR",
            "-o", f"ControlPath={self.dir / 'control'}",
            "-p", str(self.port),
        ]

    async def start(self) -> None:
        """Log in; raises :class:`SshError` (classified) when OpenSSH cannot."""
        ssh = ssh_binary()
        if ssh is None:
            raise SshError(self.host, self.port, "no OpenSSH client (ssh) on this machine")
        self._ssh = ssh
        sweep_stale_dirs()
        # mode 0700; the pid in the name lets a later start remove it should this
        # process be killed before it can
        self.dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        (self.dir / "known_hosts").write_text(known_hosts_line(self.host, self.port,
                                                               self._host_key))
        key_fd = os.memfd_create("labfleet-ssh-key", os.MFD_CLOEXEC)
        try:
            os.fchmod(key_fd, 0o600)
            os.write(key_fd, self._private_key.encode()
                     + (b"" if self._private_key.endswith("\n") else b"\n"))
            argv = [ssh, *self._options(),
                    "-o", f"IdentityFile=/proc/{os.getpid()}/fd/{key_fd}",
                    "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                    "-N", f"{self.username}@{self.host}"]
            setpriv = shutil.which("setpriv")
            if setpriv:
                argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            await self._wait_for_login()
        finally:
            os.close(key_fd)  # the master has what it needs; nothing else can read it now
            self._private_key = ""
        # what the master says later (a lost connection) goes to the log, and its pipe
        # never fills up
        self._said = asyncio.create_task(self._relay_stderr(self.process))

    async def _wait_for_login(self) -> None:
        """Until the control socket appears (the master has logged in); if the master ends
        or time runs out first, it is closed and the reason raised, classified."""
        assert self.process is not None and self.dir is not None
        control = self.dir / "control"
        try:
            async with asyncio.timeout(self.connect_timeout + 5):
                while not control.exists() and self.process.returncode is None:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self.close()
            raise ConnectTimeout(self.host, self.port,
                                 f"{self.connect_timeout:g}s (OpenSSH master)") from None
        if not control.exists():
            err = (await self.process.stderr.read()).decode(errors="replace") \
                if self.process.stderr else ""
            await self.close()
            raise _classify_stderr(self.host, self.port, self.username, err,
                                   self.connect_timeout)

    async def _relay_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            log.warning("OpenSSH master for %s:%s: %s", self.host, self.port,
                        line.decode(errors="replace").rstrip())

    def client_argv(self, argv: list[str]) -> list[str]:
        """``ssh`` running ``argv`` through the master.  Should the master be gone, ssh
        would log in afresh: with no way to authenticate left (no key of ours, none of
        ``~/.ssh``'s, no password), that fails at once instead."""
        return [self._ssh, *self._options(), "-o", "ControlMaster=no",
                "-o", "PubkeyAuthentication=no", f"{self.username}@{self.host}",
                shlex.join(argv)]

    @contextlib.asynccontextmanager
    async def read_file(self, path: str) -> AsyncIterator[PipeReader]:
        """``path`` on the server as a stream (``await f.read(n)``); its ``cat``'s failure
        (a missing file, a lost connection) raises at the end of the stream."""
        if not self.alive or self.dir is None:
            raise SshError(self.host, self.port, "the OpenSSH master connection is closed")
        argv = ["cat", "--", path]
        # a pipe of our own, read in a worker thread straight into each block: no
        # event-loop buffer in between, one copy from the kernel
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # fewer, larger wake-ups where allowed
            fcntl.fcntl(read_end, F_SETPIPE_SZ, PIPE_SIZE)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.client_argv(argv),
                stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
                stderr=asyncio.subprocess.PIPE)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        reader = PipeReader(process, read_end, self.host, self.port, self.username, argv,
                            self.connect_timeout)
        try:
            yield reader
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await reader.close()

    async def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._said is not None:
            await asyncio.gather(self._said, return_exceptions=True)
            self._said = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class PipeReader:
    """A remote ``cat``'s output: ``read(n)`` returns ``n`` bytes until the last block,
    then ``b""``; a failed command raises instead of ending quietly."""

    def __init__(self, process: asyncio.subprocess.Process, fd: int, host: str, port: int,
                 username: str, argv: list[str], timeout: float) -> None:
        self.process = process
        self.fd = fd
        self.host, self.port, self.username = host, port, username
        self.argv = argv
        self.timeout = timeout
        self._reading: asyncio.Future[bytearray] | None = None

    def _fill(self, n: int) -> bytearray:
        block = bytearray(n)
        view = memoryview(block)
        got = 0
        while got < n:
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                break
            got += k
        view.release()
        if got < n:
            del block[got:]
        return block

    async def read(self, n: int) -> bytes:
        if self.fd < 0:
            return b""
        self._reading = asyncio.get_running_loop().run_in_executor(None, self._fill, n)
        data = await self._reading
        self._reading = None
        if not data:
            await self._finished()
        return data  # type: ignore[return-value] - a bytearray reads as bytes everywhere

    async def close(self) -> None:
        """Called once the process has ended: a read still waiting sees the end first."""
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def _finished(self) -> None:
        err = (await self.process.stderr.read()).decode(errors="replace") \
            if self.process.stderr else ""
        status = await self.process.wait()
        if status == SSH_FAILED:
            raise _classify_stderr(self.host, self.port, self.username, err, self.timeout)
        if status != 0:
            raise RemoteCommandFailed(self.host, self.port, "non-zero exit", argv=self.argv,
                                      exit_status=status, stderr=err)
