"""The servers under ``labfleet up``: embedded NATS and PostgreSQL, or the ones configured.

With ``LABFLEET_NATS_URL`` / ``LABFLEET_DATABASE_URL`` unset, an embedded nats-server
(JetStream) and an embedded PostgreSQL are started in the data directory on free ports
or a private socket, so they never collide with servers already running and a restart
on the same directory finds the same streams and tables.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from labfleet.embedded import EmbeddedNats, EmbeddedPostgres, start_nats, start_postgres
from labfleet.shared.settings import Settings

from .datadir import RunFiles

Say = Callable[[str], None]


def redact_url(url: str) -> str:
    """The URL without its password (or NATS token), for printing."""
    parts = urlsplit(url)
    # nats://TOKEN@host: a NATS user part without a password is a token
    token = parts.scheme in ("nats", "tls", "ws", "wss") and bool(parts.username) \
        and not parts.password
    if not parts.password and not token:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"***@{host}" if token else f"{parts.username}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Stack:
    nats_url: str
    database_url: str
    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None

    @property
    def postgres_pid(self) -> int | None:
        if self.postgres is None:
            return None
        with contextlib.suppress(Exception):
            return int(self.postgres.server.get_pid())
        return None

    @property
    def operator_url(self) -> str:
        """The URL the supervisor itself uses (pings): the operator's, when embedded."""
        return self.nats.operator_url if self.nats is not None else self.nats_url

    @property
    def identity_dir(self) -> Path | None:
        return self.nats.identity_dir if self.nats is not None else None

    def describe(self) -> list[str]:
        lines = []
        if self.nats is not None:
            lines.append(f"NATS: embedded nats-server (pid {self.nats.process.pid}) at "
                         f"{self.nats_url}, JetStream store {self.nats.store_dir}, identities "
                         f"{self.nats.identity_dir} (every service logs in with its own)")
        else:
            lines.append(f"NATS: {redact_url(self.nats_url)} (from LABFLEET_NATS_URL)")
        if self.postgres is not None:
            lines.append(f"PostgreSQL: embedded (pid {self.postgres_pid}), data {self.postgres.pgdata}")
        else:
            lines.append(f"PostgreSQL: {redact_url(self.database_url)} (from LABFLEET_DATABASE_URL)")
        return lines

    def revive(self, say: Say) -> list[str]:
        """Start again an embedded server that died (killed, crashed, OOM); their names.

        The services keep their URLs: NATS comes back on its port with its JetStream store
        and identities, PostgreSQL on its socket in the same data directory; their clients
        reconnect by themselves.  Blocking: call it from a thread.
        """
        revived = []
        if self.nats is not None and self.nats.process.poll() is not None:
            code = self.nats.process.returncode
            say(f"embedded nats-server (pid {self.nats.process.pid}) died ({_exit(code)}): "
                "starting it again on the same port and store")
            port = urlsplit(self.nats.url).port
            self.nats = start_nats(self.nats.conf_path.parent, port=port)
            say(f"embedded nats-server is back (pid {self.nats.process.pid})")
            revived.append("nats-server")
        if self.postgres is not None and not self.postgres_running:
            say("embedded PostgreSQL died: starting it again on the same data directory")
            server = self.postgres.server
            with server._lock:  # pgserver's own inter-process lock around its start
                server.ensure_postgres_running()
            say(f"embedded PostgreSQL is back (pid {self.postgres_pid})")
            revived.append("postgres")
        return revived

    @property
    def postgres_running(self) -> bool:
        pid = self.postgres_pid
        if pid is None:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return False

    def stop(self, say: Say) -> None:
        if self.nats is not None:
            say(f"stopping embedded nats-server (pid {self.nats.process.pid})")
            self.nats.stop()
        if self.postgres is not None:
            say(f"stopping embedded PostgreSQL (pid {self.postgres_pid})")
            self.postgres.stop()


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {-code}"
    return f"exit code {code}"


def start_stack(settings: Settings, data_dir: Path, run: RunFiles, say: Say) -> Stack:
    nats: EmbeddedNats | None = None
    if settings.nats_url:
        nats_url = settings.nats_url
    else:
        nats_dir = data_dir / "nats"
        stop_orphan(run, "nats-server", [str(nats_dir / "nats.conf")], say)
        say("starting embedded nats-server (JetStream) ...")
        nats = start_nats(nats_dir)
        run.write_pid("nats-server", nats.process.pid)
        nats_url = nats.url
    try:
        postgres: EmbeddedPostgres | None = None
        if settings.database_url:
            database_url = settings.database_url
        else:
            say("starting embedded PostgreSQL ...")
            # pgserver keeps its inter-process lock in the runtime dir; the fallback is fine
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            forget_dead_pgserver_handles(data_dir / "postgres" / "pgdata")
            postgres = start_postgres(data_dir / "postgres")
            database_url = postgres.url
    except BaseException:
        if nats is not None:
            nats.stop()
        raise
    return Stack(nats_url=nats_url, database_url=database_url, nats=nats, postgres=postgres)


def stop_orphan(run: RunFiles, name: str, marker: list[str], say: Say) -> None:
    """Stop a process left running by a ``labfleet up`` that was killed.

    The embedded nats-server runs in its own session, so it outlives a SIGKILLed
    supervisor (and two servers on one JetStream store would corrupt it); a service that
    ignored its parent-death signal may linger too.  Only the process in this data
    directory's pid file is touched, and only if its command line still contains
    ``marker`` (so a reused pid is left alone).
    """
    pid = run.read_pid(name)
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        if not all(part in cmdline for part in marker):
            return
        say(f"stopping {name} (pid {pid}) left over from a previous run on this data dir")
        proc.terminate()
        try:
            proc.wait(10)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass
    finally:
        run.remove_pid(name)


def forget_dead_pgserver_handles(pgdata: Path) -> None:
    """Drop pids of dead processes from pgserver's handle list.

    pgserver stops the server only when the last process holding a handle lets go; a
    supervisor that was killed never let go, and its stale pid would keep every later run
    from stopping the server it started.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and pid != os.getpid()
             and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
