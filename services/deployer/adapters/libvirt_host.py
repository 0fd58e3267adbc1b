"""libvirt on a QEMU host over ``qemu+ssh://`` with the host's pinned key.

libvirt's ssh transport runs the OpenSSH client; it is given a small wrapper (the URI's
``command=``) that trusts exactly the key pinned at registration
(``StrictHostKeyChecking=yes`` against a ``known_hosts`` holding that one key) and logs
in with the credentials inventory handed out — never ``no_verify``.  The wrapper, key and
``known_hosts`` live in a 0700 directory of the deployer's data dir.

libvirt-python blocks, so every call runs in a thread; one connection per host is kept
open, and its host key verified again with a fresh handshake once it is older than
``host_key_recheck_s`` since its last verification (a changed key closes it).  The
console is a libvirt stream read by a thread of its own and handed to the event loop
chunk by chunk.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import libvirt  # type: ignore[import-untyped]

from labfleet.shared.events.resource import ResourceView
from labfleet.shared.ssh import Credentials, HostKeyMismatch, SshError, verify_host_key
from labfleet.shared.ssh.openssh import known_hosts_line

# libvirt prints every error to stderr unless a handler takes them; they are raised anyway
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtFailed(Exception):
    def __init__(self, host: str, action: str, detail: str) -> None:
        super().__init__(f"libvirt on {host}: {action} failed: {detail}")
        self.host = host
        self.action = action
        self.detail = detail


@dataclass(frozen=True)
class HostAccess:
    host_id: uuid.UUID
    view: ResourceView
    creds: Credentials

    @property
    def name(self) -> str:
        return self.view.name


def public_uri(view: ResourceView) -> str:
    """The URI a person types (with their own SSH setup): ``qemu+ssh://user@addr:port/system``."""
    path = "/system"
    if view.qemu is not None and view.qemu.libvirt_uri:
        path = urlsplit(view.qemu.libvirt_uri).path or path
    port = "" if view.ssh.port == 22 else f":{view.ssh.port}"
    return f"qemu+ssh://{view.ssh.username}@{view.ssh.address}{port}{path}"


def _known_hosts_line(view: ResourceView) -> str:
    if not view.ssh.host_key:
        raise LibvirtFailed(view.name, "connect", "no pinned host key; refusing to connect "
                            "unverified (register the host again)")
    return known_hosts_line(view.ssh.address, view.ssh.port, view.ssh.host_key)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class LibvirtHosts:
    def __init__(self, runtime_dir: Path, connect_timeout_s: float = 10.0,
                 host_key_recheck_s: float | None = 5.0) -> None:
        self.runtime_dir = runtime_dir
        self.connect_timeout_s = connect_timeout_s
        self.host_key_recheck_s = host_key_recheck_s
        self._conns: dict[uuid.UUID, tuple[str, Any]] = {}
        #: when each kept connection's host key was last verified (monotonic)
        self._verified: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    async def _recheck(self, access: HostAccess) -> None:
        """Verify the host key of a kept connection again when due (see the module)."""
        ssh = access.view.ssh
        with self._lock:
            kept = access.host_id in self._conns
            last = self._verified.get(access.host_id, 0.0)
        if not kept or not ssh.host_key or self.host_key_recheck_s is None \
                or time.monotonic() - last < self.host_key_recheck_s:
            return
        try:
            await verify_host_key(ssh.address, ssh.port, ssh.host_key, self.connect_timeout_s)
        except HostKeyMismatch as exc:
            await asyncio.to_thread(self._forget, access.host_id)
            raise LibvirtFailed(access.name, "connect", exc.message) from None
        except SshError:
            return  # no handshake now: the verified connection stays, checked next time
        with self._lock:
            self._verified[access.host_id] = time.monotonic()

    # ---- access -----------------------------------------------------------------------

    def _access_dir(self, access: HostAccess) -> Path:
        """Write the wrapper, key and known_hosts for a host; returns the directory."""
        d = self.runtime_dir / str(access.host_id)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        os.chmod(d, 0o700)
        _write_private(d / "known_hosts", _known_hosts_line(access.view))
        opts = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={int(self.connect_timeout_s)}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
        env = ""
        if access.creds.private_key:
            _write_private(d / "id", access.creds.private_key.rstrip("\n") + "\n")
            opts += ["-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={d / 'id'}",
                     "-o", "BatchMode=yes"]
        if access.creds.password:
            _write_private(d / "password", access.creds.password)
            _write_private(d / "askpass", f"#!/bin/sh\nexec cat {shlex.quote(str(d / 'password'))}\n",
                           0o700)
            env = (f"SSH_ASKPASS={shlex.quote(str(d / 'askpass'))} SSH_ASKPASS_REQUIRE=force "
                   "DISPLAY=:0 ")
            if not access.creds.private_key:
                opts += ["-o", "PreferredAuthentications=password,keyboard-interactive"]
        ssh = shutil.which("ssh") or "/usr/bin/ssh"
        _write_private(d / "ssh", f"#!/bin/sh\n{env}exec {shlex.join([ssh, *opts])} \"$@\"\n",
                       0o700)
        return d

    def uri(self, access: HostAccess) -> str:
        d = self._access_dir(access)
        return f"{public_uri(access.view)}?command={quote(str(d / 'ssh'), safe='/')}&no_tty=1"

    def _connect(self, access: HostAccess) -> Any:
        with self._lock:
            cached = self._conns.get(access.host_id)
        if cached is not None:
            uri, conn = cached
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            self._forget(access.host_id)
        uri = self.uri(access)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise LibvirtFailed(access.name, "connect", _why(exc)) from None
        with self._lock:
            self._conns[access.host_id] = (uri, conn)
            self._verified[access.host_id] = time.monotonic()
        return conn

    def _forget(self, host_id: uuid.UUID) -> None:
        with self._lock:
            cached = self._conns.pop(host_id, None)
            self._verified.pop(host_id, None)
        if cached is not None:
            with contextlib.suppress(libvirt.libvirtError):
                cached[1].close()

    async def connect(self, access: HostAccess) -> None:
        """Open (or check) the host's connection ahead of the calls that need it."""
        await self._recheck(access)
        await asyncio.to_thread(self._connect, access)

    async def _call(self, access: HostAccess, action: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in a thread; a dropped connection is re-opened once."""
        await self._recheck(access)

        def run() -> Any:
            for attempt in (1, 2):
                conn = self._connect(access)
                try:
                    return fn(conn)
                except libvirt.libvirtError as exc:
                    if attempt == 1 and exc.get_error_code() in (
                            libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                            libvirt.VIR_ERR_INTERNAL_ERROR) and not _alive(conn):
                        self._forget(access.host_id)
                        continue
                    raise LibvirtFailed(access.name, action, _why(exc)) from None
            raise AssertionError("unreachable")
        return await asyncio.to_thread(run)

    # ---- domains ----------------------------------------------------------------------

    async def start_with_console(self, access: HostAccess, name: str, xml: str,
                                 loop: asyncio.AbstractEventLoop) -> Console:
        """Create the domain (transient: it exists while it runs, so nothing is left
        defined on the host when it stops) paused, attach the console, then resume it: the
        console sees the first byte the guest prints."""
        def start(conn: Any) -> Console:
            _remove_domain(conn, name)
            dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
            stream = conn.newStream(0)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            console = Console(stream, dom, loop)
            console.start()
            dom.resume()
            return console
        return await self._call(access, "start the VM", start)

    async def remove_domain(self, access: HostAccess, name: str) -> bool:
        """Destroy and undefine; True if there was such a domain."""
        return bool(await self._call(access, "remove the VM", lambda c: _remove_domain(c, name)))

    async def domain_names(self, access: HostAccess) -> list[str]:
        return list(await self._call(access, "list VMs", lambda c: [
            d.name() for d in c.listAllDomains(0)]))

    async def is_running(self, access: HostAccess, name: str) -> bool:
        def check(conn: Any) -> bool:
            try:
                return bool(conn.lookupByName(name).isActive())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
        return bool(await self._call(access, "look up the VM", check))

    def close(self) -> None:
        for host_id in list(self._conns):
            self._forget(host_id)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _remove_domain(conn: Any, name: str) -> bool:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    try:
        persistent = bool(dom.isPersistent())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False  # a transient domain that stopped meanwhile
        raise
    with contextlib.suppress(libvirt.libvirtError):  # not running is fine
        dom.destroy()
    if persistent:  # defined by an earlier version of the deployer, or by hand
        try:
            dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return True


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _why(exc: Any) -> str:
    return str(exc.get_error_message() or exc).strip()


class Console:
    """A domain's serial console: a thread reads the libvirt stream into an asyncio queue."""

    def __init__(self, stream: Any, dom: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.dom = dom
        self.loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True,
                                        name=f"console-{dom.name()}")
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _pump(self) -> None:
        try:
            while not self._closed:
                data = self.stream.recv(16384)
                if not isinstance(data, bytes) or not data:
                    break  # end of stream (-2 would be "again", only on non-blocking ones)
                self.loop.call_soon_threadsafe(self.queue.put_nowait, data)
        except Exception:  # noqa: BLE001 - a closed stream ends the console
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    async def read(self, timeout: float) -> bytes | None:
        """Next chunk; b"" when nothing came within ``timeout``; None at the end."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return b""

    def is_active(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except Exception:  # noqa: BLE001
            return False

    async def close(self) -> None:
        self._closed = True
        def abort() -> None:
            with contextlib.suppress(Exception):
                self.stream.abort()
        await asyncio.to_thread(abort)
        await asyncio.to_thread(self._thread.join, 5)


__all__ = ["Console", "HostAccess", "LibvirtFailed", "LibvirtHosts", "public_uri"]
