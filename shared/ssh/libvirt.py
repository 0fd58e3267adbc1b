"""libvirt on a remote host over SSH, with the host key pinned at registration.

libvirt-python blocks: call :func:`open_remote` and everything on the connection it returns
from a worker thread (``asyncio.to_thread``), never on the event loop.

How the host key is pinned (found by trying each transport against libvirt 9):

* ``qemu+ssh://`` runs the ``ssh`` binary, which reads only the user's ``~/.ssh`` files;
  its URI has ``keyfile=`` and ``no_verify=`` but no way to name a known_hosts file, so
  pinning would need a ``command=`` wrapper script per host.  Not used.
* ``qemu+libssh://`` (and ``qemu+libssh2://``) take ``known_hosts=<file>`` and
  ``known_hosts_verify=normal``: a key that differs from the file fails with "SSH HOST KEY
  VERIFICATION FAILED", an absent one fails too.  This module writes the pinned key into a
  private known_hosts file and the private key into a 0600 key file, both in a 0700 temp
  directory that exists only while the connection is being opened (libssh reads them
  during the handshake), and uses ``qemu+libssh://`` with ``sshauth=privkey`` or
  ``sshauth=password`` (the password is handed over by the auth callback, once: libssh
  would otherwise ask again forever).
* ``proxy=native`` runs ``virt-ssh-helper`` on the host (libvirt >= 8); the default
  ``proxy=auto`` probes the host's shell first and costs ~10 s per connection here.  When
  the host has no ``virt-ssh-helper`` (exit 127) the open is retried with ``proxy=auto``.

The canonical address of a host stays ``qemu+ssh://user@host:port/system`` (what an admin
types); :func:`transport_uri` turns it into the pinned ``qemu+libssh://`` form.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncssh

from .openssh import known_hosts_line
from .pool import Credentials

try:  # the client library is optional for services that never speak to libvirt
    import libvirt
except ImportError:  # pragma: no cover - installed by pyproject.toml
    libvirt = None  # type: ignore[assignment]

_handler_lock = threading.Lock()
_handler_set = False


def _quiet() -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""
    global _handler_set
    with _handler_lock:
        if not _handler_set and libvirt is not None:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_set = True


def canonical_uri(username: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"qemu+ssh://{quote(username, safe='')}@{host}:{port}/system"


def transport_uri(username: str, address: str, port: int, *, known_hosts: Path,
                  keyfile: Path | None, proxy: str = "native") -> str:
    host = f"[{address}]" if ":" in address else address
    params = [f"known_hosts={quote(str(known_hosts))}", "known_hosts_verify=normal",
              f"proxy={proxy}", "no_tty=1"]
    if keyfile is not None:
        params += [f"keyfile={quote(str(keyfile))}", "sshauth=privkey"]
    else:
        params.append("sshauth=password")
    return f"qemu+libssh://{quote(username, safe='')}@{host}:{port}/system?{'&'.join(params)}"


def known_hosts_lines(address: str, port: int, host_key: str) -> str:
    """The pinned key under both names libssh may look it up by."""
    lines = known_hosts_line(address, port, host_key)
    return lines if port == 22 else lines + known_hosts_line(address, 22, host_key)


@contextlib.contextmanager
def _private_files(address: str, port: int, host_key: str, creds: Credentials
                   ) -> Iterator[tuple[Path, Path | None]]:
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-libvirt-"))
    try:
        os.chmod(tmp, 0o700)
        known = tmp / "known_hosts"
        known.write_text(known_hosts_lines(address, port, host_key))
        keyfile = None
        if creds.private_key:
            keyfile = tmp / "key"
            fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            # libssh reads OpenSSH and PEM keys; re-export whatever asyncssh could read
            text = asyncssh.import_private_key(creds.private_key).export_private_key("openssh")
            with os.fdopen(fd, "wb") as out:
                out.write(text)
        yield known, keyfile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class LibvirtFailure(Exception):
    """Opening or using libvirt failed; ``code`` says which way (see :func:`classify`)."""

    code: str
    message: str
    libvirt_code: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


def classify(exc: Exception) -> LibvirtFailure:
    """A libvirt error as one of: ``host_key_changed``, ``authentication_failed``,
    ``connection_refused``, ``unreachable``, ``timeout``, ``libvirt_unavailable``."""
    text = str(exc)
    code_of = getattr(exc, "get_error_code", None)
    lv_code = code_of() if callable(code_of) else None
    lower = text.lower()
    if "host key verification failed" in lower or "differs from stored identity" in lower:
        code = "host_key_changed"
    elif "authentication failed" in lower or "password request failed" in lower:
        code = "authentication_failed"
    elif "connection refused" in lower:
        code = "connection_refused"
    elif "no route to host" in lower or "network is unreachable" in lower:
        code = "unreachable"
    elif "timed out" in lower:
        code = "timeout"
    else:
        # SSH worked (or the error is libvirt's own): the daemon or its helper is missing
        code = "libvirt_unavailable"
    return LibvirtFailure(code, text, lv_code)


def open_remote(address: str, port: int, creds: Credentials, host_key: str) -> object:
    """A ``virConnect`` to ``qemu:///system`` on the host (blocking; call in a thread).

    Raises :class:`LibvirtFailure`.
    """
    if libvirt is None:
        raise LibvirtFailure("libvirt_client_missing",
                             "libvirt-python is not installed where this service runs")
    _quiet()
    with _private_files(address, port, host_key, creds) as (known, keyfile):
        last: Exception | None = None
        for proxy in ("native", "auto"):
            uri = transport_uri(creds.username, address, port, known_hosts=known,
                                keyfile=keyfile, proxy=proxy)
            try:
                return libvirt.openAuth(uri, [_CRED_TYPES, _auth_callback(creds), None], 0)
            except libvirt.libvirtError as exc:
                last = exc
                if "non-zero code: 127" not in str(exc):  # not "no virt-ssh-helper"
                    break
        assert last is not None
        raise classify(last)


_CRED_TYPES = [] if libvirt is None else [
    libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT]


def _auth_callback(creds: Credentials):  # type: ignore[no-untyped-def]
    asked = {"secret": 0}

    def answer(requested, _data):  # type: ignore[no-untyped-def]
        for cred in requested:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = creds.username
            elif cred[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                asked["secret"] += 1
                if asked["secret"] > 1 or not creds.password:
                    return -1  # the one password was refused: stop libssh asking again
                cred[4] = creds.password
        return 0

    return answer
