"""SSH to lab hosts: pooled, keep-alive connections with pinned host keys.

* :func:`probe_host_key` — fetch a host's key on first contact (shown to the admin).
* :func:`verify_host_key` — a fresh handshake checked against the pinned key.
* :class:`SshPool` — one persistent connection per (host, port, user), re-opened when it
  drops, its host key verified again every ``host_key_recheck_s``;
  ``await pool.run(target, creds, ["uname", "-r"])`` runs an argument list (joined with
  :func:`shlex.join`, never by concatenation).
* Errors carry data (:class:`SshError` and subclasses) and a message a person can act on.
"""
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
from .pool import Credentials, SshPool, fingerprint, probe_host_key, same_key, verify_host_key

__all__ = [
    "AuthenticationFailed", "ConnectTimeout", "ConnectionRefused", "Credentials",
    "HostKeyMismatch", "HostUnreachable", "NotAnSshServer", "RemoteCommandFailed", "SshError",
    "SshPool", "fingerprint", "probe_host_key", "same_key", "verify_host_key",
]
