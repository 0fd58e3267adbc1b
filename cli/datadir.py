"""The data directory of ``labfleet up``: its lock, its secrets, its run files.

Layout (everything a restart needs to find the same state)::

    labfleet.lock        held (flock) by the one `labfleet up` using this directory
    credential.key       Fernet key encrypting SSH credentials at rest (0600)
    session.key          the gateway's session signing secret (0600)
    nats/                embedded nats-server: config, JetStream store, log
    postgres/pgdata/     embedded PostgreSQL cluster
    run/<service>.pid    pid of each supervised service process
    run/endpoints.json   where the running stack's NATS and HTTP endpoints are
    admin-credentials    written by the gateway on its first start

The lock is an advisory ``flock``: the kernel drops it when its holder dies, so a crashed
``labfleet up`` never leaves a stale lock behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from labfleet.shared.secrets import ensure_key_file
from labfleet.shared.settings import Settings

LOCK_NAME = "labfleet.lock"
CREDENTIALS_FILE = "admin-credentials"


class DataDirBusy(RuntimeError):
    """Another ``labfleet up`` holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another `labfleet up` (pid {holder}) is already running on {self.data_dir}: "
                f"stop it first (Ctrl-C in its terminal, or `kill -TERM {holder}`), "
                "or start this one with another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # the file stays: removing it would let a third process lock a different inode
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def stack_secrets(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Environment entries carrying the stack's secrets to the services.

    A secret given in the environment wins; otherwise it is generated once into the data
    directory, so a restart decrypts what the previous run stored.
    """
    credential = (settings.credential_key.get_secret_value() if settings.credential_key
                  else ensure_key_file(data_dir / "credential.key"))
    session = (settings.session_secret.get_secret_value() if settings.session_secret
               else ensure_key_file(data_dir / "session.key"))
    return {"LABFLEET_CREDENTIAL_KEY": credential, "LABFLEET_SESSION_SECRET": session}


class RunFiles:
    """Pid files and the endpoints file under ``<data_dir>/run``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "run"

    def pid_path(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def write_pid(self, name: str, pid: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_path(name).with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.pid_path(name))

    def read_pid(self, name: str) -> int | None:
        try:
            return int(self.pid_path(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def remove_pid(self, name: str) -> None:
        self.pid_path(name).unlink(missing_ok=True)

    @property
    def endpoints_path(self) -> Path:
        return self.dir / "endpoints.json"

    def write_endpoints(self, endpoints: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.endpoints_path.with_suffix(".tmp"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(endpoints, f, indent=2)
        self.endpoints_path.with_suffix(".tmp").replace(self.endpoints_path)

    def read_endpoints(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.endpoints_path.read_text()))
        except (OSError, ValueError):
            return {}

    def remove_endpoints(self) -> None:
        self.endpoints_path.unlink(missing_ok=True)
