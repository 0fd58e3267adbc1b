"""Pooled asyncssh connections.  See the package docstring."""
from __future__ import annotations

import asyncio
import errno
import logging
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from .errors import (
    AuthenticationFailed,
    ConnectionRefused,
    ConnectTimeout,
    HostKeyMismatch,
    HostUnreachable,
    NotAnSshServer,
    RemoteCommandFailed,
    SshError,
)
from .openssh import OpenSshMaster

log = logging.getLogger(__name__)

#: AES-GCM first: OpenSSL does all of it, where asyncssh's ChaCha20-Poly1305 (its default
#: first choice) builds a cipher context per packet in Python and costs about twice the CPU
#: per MB received (build artifacts over SFTP); the other defaults stay as fallbacks
_FAST_FIRST = (b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com")
ENCRYPTION_ALGS = [a.decode() for a in (
    *_FAST_FIRST,
    *(a for a in asyncssh.encryption.get_default_encryption_algs() if a not in _FAST_FIRST))]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str | None = None
    private_key: str | None = None  # OpenSSH/PEM text

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, password={'***' if self.password else None}, private_key={'***' if self.private_key else None})"


def fingerprint(public_key_line: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, as ``ssh-keygen -l`` shows it."""
    return str(asyncssh.import_public_key(public_key_line).get_fingerprint("sha256"))


def _classify(exc: BaseException, host: str, port: int, username: str, timeout: float,
              *, connecting: bool = False) -> SshError:
    if isinstance(exc, SshError):
        return exc
    if connecting and isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError):
        return NotAnSshServer(host, port, "closed before the SSH greeting")
    if connecting and isinstance(exc, asyncssh.ProtocolError):
        return NotAnSshServer(host, port, f"what it sent is not SSH ({exc.reason})")
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationFailed(host, port, str(exc), username=username)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyMismatch(host, port, str(exc))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectTimeout(host, port, f"{timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(host, port, str(exc))
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(host, port, f"name does not resolve: {exc.strerror}")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                   errno.EADDRNOTAVAIL):
        return HostUnreachable(host, port, exc.strerror or str(exc))
    if isinstance(exc, asyncssh.DisconnectError):
        return SshError(host, port, f"disconnected: {exc.reason}")
    return SshError(host, port, f"{type(exc).__name__}: {exc}")


def _client_keys(creds: Credentials) -> list[asyncssh.SSHKey] | None:
    if not creds.private_key:
        return None
    try:
        return [asyncssh.import_private_key(creds.private_key)]
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise SshError("-", 0, f"the private key could not be read: {exc}") from None


async def probe_host_key(host: str, port: int, timeout: float = 10.0,
                         like: str | None = None) -> str:
    """Return the host's public key line (``ssh-ed25519 AAAA…``) without logging in.

    ``like`` (a pinned key line) asks for a key of the same type first, so a host with
    several host keys presents the one that was pinned; a host that no longer has a key
    of that type presents whichever it offers.
    """
    algs: list[str] | None = None
    if like:
        algs = [a.decode() for a in asyncssh.import_public_key(like).sig_algorithms]
    try:
        async with asyncio.timeout(timeout):
            try:
                key = await asyncssh.get_server_host_key(
                    host, port, **({"server_host_key_algs": algs} if algs else {}))
            except (asyncssh.KeyExchangeFailed, asyncssh.DisconnectError,
                    ConnectionResetError):
                if not algs:
                    raise
                # no key of that type any more (OpenSSH drops the connection): any key
                key = await asyncssh.get_server_host_key(host, port)
    except BaseException as exc:  # noqa: BLE001 - classified
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _classify(exc, host, port, "", timeout, connecting=True) from None
    if key is None:
        raise SshError(host, port, "the server presented no host key")
    return key.export_public_key("openssh").decode().strip()


def same_key(a: str, b: str) -> bool:
    """Do two OpenSSH public key lines hold the same key (comments aside)?"""
    return a.split()[:2] == b.split()[:2]


async def verify_host_key(host: str, port: int, host_key: str, timeout: float = 10.0) -> str:
    """A fresh handshake with the host, its key checked against the pinned ``host_key``.

    Returns the presented key line; raises :class:`HostKeyMismatch` (both SHA256
    fingerprints) when it differs, another :class:`SshError` when no handshake was made.
    """
    presented = await probe_host_key(host, port, timeout, like=host_key)
    if not same_key(presented, host_key):
        raise HostKeyMismatch(host, port, "host key changed", expected=fingerprint(host_key),
                              presented=fingerprint(presented))
    return presented


class SshPool:
    """One persistent connection per (host, port, user); opened lazily, re-opened on loss.

    A pooled connection was verified against the pinned key when it was opened; the host
    may have been given another key since (reinstalled, or someone in between).  So a
    connection whose last verification is older than ``host_key_recheck_s`` is verified
    again with a fresh handshake (:func:`verify_host_key`) before it is used: a changed
    key closes it and raises :class:`HostKeyMismatch`.  ``0`` verifies before every use,
    ``None`` never after the login.  A recheck that makes no handshake at all (the host
    refuses new connections for a moment) leaves the verified connection in use and is
    tried again at the next use.
    """

    #: seconds before a master that could not log in is tried again
    BULK_RETRY_S = 300.0

    def __init__(self, *, connect_timeout: float = 10.0, command_timeout: float = 60.0,
                 keepalive_s: float = 15.0, max_sessions: int = 8,
                 host_key_recheck_s: float | None = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.host_key_recheck_s = host_key_recheck_s
        #: when each pooled connection's host key was last verified (monotonic)
        self._verified: dict[tuple[str, int, str], float] = {}
        self.command_timeout = command_timeout
        self.keepalive_s = keepalive_s
        self._conns: dict[tuple[str, int, str], asyncssh.SSHClientConnection] = {}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._sessions = max_sessions
        #: OpenSSH masters for bulk reads, started in the background on first ask
        self._masters: dict[tuple[str, int, str], asyncio.Task[OpenSshMaster | None]] = {}
        self._bulk_failed: dict[tuple[str, int, str], float] = {}

    async def connect(self, host: str, port: int, creds: Credentials,
                      host_key: str | None) -> asyncssh.SSHClientConnection:
        """A fresh connection verifying ``host_key`` (an OpenSSH public key line).

        ``host_key=None`` is refused: every connection checks a pinned key; fetch it
        first with :func:`probe_host_key` and show it to the admin.
        """
        if not host_key:
            raise SshError(host, port, "no pinned host key; refusing to connect unverified")
        pinned = asyncssh.import_public_key(host_key)
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncssh.connect(
                    host, port,
                    username=creds.username,
                    password=creds.password,
                    client_keys=_client_keys(creds),
                    # trust exactly the pinned key; asyncssh then negotiates its algorithm
                    known_hosts=([pinned], [], []),
                    agent_path=None,
                    config=None,
                    preferred_auth=("publickey,password,keyboard-interactive"
                                    if creds.private_key else "password,keyboard-interactive"),
                    keepalive_interval=self.keepalive_s,
                    keepalive_count_max=3,
                    encryption_algs=ENCRYPTION_ALGS,
                )
        except BaseException as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, asyncssh.HostKeyNotVerifiable):
                try:
                    presented = fingerprint(await probe_host_key(
                        host, port, self.connect_timeout, like=host_key))
                except SshError:
                    presented = "unknown"
                raise HostKeyMismatch(
                    host, port, "host key changed",
                    expected=str(pinned.get_fingerprint("sha256")), presented=presented) from None
            raise _classify(exc, host, port, creds.username, self.connect_timeout,
                            connecting=True) from None
        return conn

    async def _get(self, host: str, port: int, creds: Credentials,
                   host_key: str | None) -> asyncssh.SSHClientConnection:
        key = (host, port, creds.username)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._conns.get(key)
            if conn is not None and not conn.is_closed():
                await self._recheck(key, host_key)
                return conn
            conn = await self.connect(host, port, creds, host_key)
            self._conns[key] = conn
            self._verified[key] = time.monotonic()
            return conn

    def _recheck_due(self, key: tuple[str, int, str]) -> bool:
        if self.host_key_recheck_s is None:
            return False
        return time.monotonic() - self._verified.get(key, 0.0) >= self.host_key_recheck_s

    async def _recheck(self, key: tuple[str, int, str], host_key: str | None) -> None:
        """Verify the host key again when due; a changed key drops the connection."""
        if not host_key or not self._recheck_due(key):
            return
        host, port, username = key
        try:
            await verify_host_key(host, port, host_key, self.connect_timeout)
        except HostKeyMismatch as exc:
            log.error("%s; its pooled connection is closed", exc.message)
            self.drop(host, port, username)
            raise
        except SshError as exc:
            log.info("the host key of %s:%s could not be checked again now (%s); the "
                     "connection verified before stays in use", host, port, exc.message)
            return
        self._verified[key] = time.monotonic()

    def drop(self, host: str, port: int, username: str) -> None:
        self._verified.pop((host, port, username), None)
        conn = self._conns.pop((host, port, username), None)
        if conn is not None:
            conn.close()
        self._drop_master((host, port, username))

    # ---- bulk reads through OpenSSH (see .openssh) --------------------------------

    def warm_bulk(self, host: str, port: int, creds: Credentials, host_key: str | None) -> None:
        """Start logging the OpenSSH master in, without waiting (a build does this at its
        start, so its upload finds the master ready).  A master that died is restarted;
        one that could not start is tried again after :attr:`BULK_RETRY_S`."""
        key = (host, port, creds.username)
        task = self._masters.get(key)
        if task is not None:
            if not task.done():
                return  # logging in
            master = None if task.cancelled() or task.exception() else task.result()
            if master is not None and master.alive:
                return
            if master is None and time.monotonic() - self._bulk_failed.get(key, 0.0) \
                    < self.BULK_RETRY_S:
                return  # SFTP for now
            if master is not None:
                asyncio.ensure_future(master.close())
        self._masters[key] = asyncio.create_task(self._start_master(host, port, creds, host_key))

    async def bulk(self, host: str, port: int, creds: Credentials,
                   host_key: str | None) -> OpenSshMaster | None:
        """The logged-in OpenSSH master for large reads, or None where there is none
        (password login, no ``ssh`` client, or OpenSSH could not log in: logged once).
        The host key is verified again when due, as for the pooled connection."""
        await self._recheck((host, port, creds.username), host_key)
        self.warm_bulk(host, port, creds, host_key)
        return await asyncio.shield(self._masters[(host, port, creds.username)])

    async def _start_master(self, host: str, port: int, creds: Credentials,
                            host_key: str | None) -> OpenSshMaster | None:
        key = (host, port, creds.username)
        if not host_key or not OpenSshMaster.available(creds.private_key):
            self._bulk_failed[key] = time.monotonic()
            return None
        master = OpenSshMaster(host, port, creds.username, creds.private_key or "", host_key,
                               connect_timeout=self.connect_timeout, keepalive_s=self.keepalive_s)
        try:
            await master.start()
        except (SshError, OSError) as exc:
            await master.close()
            why = exc.message if isinstance(exc, SshError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, HostKeyMismatch):
                why = await self._why_key_refused(host, port, host_key)
            log.warning("large files from %s:%s come over SFTP: the OpenSSH client could not "
                        "connect (%s)", host, port, why)
            self._bulk_failed[key] = time.monotonic()
            return None
        except BaseException:
            await master.close()  # cancelled while logging in: leave no ssh behind
            raise
        return master

    async def _why_key_refused(self, host: str, port: int, host_key: str) -> str:
        """OpenSSH says only that the key did not verify: a handshake of our own tells a
        changed key (both fingerprints) from a pinned key OpenSSH did not match."""
        try:
            presented = await verify_host_key(host, port, host_key, self.connect_timeout)
        except SshError as exc:
            return exc.message
        return (f"OpenSSH refused the pinned host key {fingerprint(host_key)}, which the host "
                f"does present ({fingerprint(presented)}): its known_hosts entry did not match")

    def _drop_master(self, key: tuple[str, int, str]) -> None:
        self._bulk_failed.pop(key, None)
        task = self._masters.pop(key, None)
        if task is not None:
            asyncio.ensure_future(self._close_master(task))

    @staticmethod
    async def _close_master(task: asyncio.Task[OpenSshMaster | None]) -> None:
        if not task.done():
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        if isinstance(results[0], OpenSshMaster):
            await results[0].close()

    async def run(self, host: str, port: int, creds: Credentials, host_key: str | None,
                  argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
                  input: str | None = None) -> asyncssh.SSHCompletedProcess:
        """Run ``argv`` on the host (quoted with :func:`shlex.join`)."""
        command = shlex.join(argv)
        t = timeout or self.command_timeout
        for attempt in (1, 2):
            conn = await self._get(host, port, creds, host_key)
            try:
                async with asyncio.timeout(t):
                    result = await conn.run(command, check=False, input=input)
                break
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError,
                    ConnectionResetError) as exc:
                self.drop(host, port, creds.username)
                if attempt == 2:
                    raise _classify(exc, host, port, creds.username, t) from None
            except TimeoutError:
                raise RemoteCommandFailed(host, port, f"timed out after {t:g}s", argv=list(argv),
                                          exit_status=None) from None
        if check and result.exit_status != 0:
            raise RemoteCommandFailed(
                host, port, "non-zero exit", argv=list(argv), exit_status=result.exit_status,
                stdout=str(result.stdout or ""), stderr=str(result.stderr or ""))
        return result

    async def connection(self, host: str, port: int, creds: Credentials,
                         host_key: str | None) -> asyncssh.SSHClientConnection:
        """The pooled connection itself, for SFTP or long-running processes."""
        return await self._get(host, port, creds, host_key)

    async def close(self) -> None:
        masters = list(self._masters.values())
        self._masters.clear()
        await asyncio.gather(*(self._close_master(t) for t in masters))
        for conn in self._conns.values():
            conn.close()
        for conn in list(self._conns.values()):
            await conn.wait_closed()
        self._conns.clear()
        self._verified.clear()
