"""SSH to lab hosts: pooled, keep-alive connections with pinned host keys.

* :func:`probe_host_key` — fetch a host's key on first contact (shown to the admin).
* :class:`SshPool` — one persistent connection per (host, port, user), re-opened when it
  drops; ``await pool.run(target, creds, ["uname", "-r"])`` runs an argument list
  (joined with :func:`shlex.join`, never by concatenation).
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
from .pool import Credentials, SshPool, fingerprint, probe_host_key

__all__ = [
    "AuthenticationFailed", "ConnectTimeout", "ConnectionRefused", "Credentials",
    "HostKeyMismatch", "HostUnreachable", "NotAnSshServer", "RemoteCommandFailed", "SshError", "SshPool",
    "fingerprint", "probe_host_key",
]
