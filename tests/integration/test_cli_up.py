"""``labfleet up`` as a user runs it: a subprocess with its own data dir and port, the
embedded NATS and PostgreSQL, every service that exists; crash and restart, Ctrl-C, and
a second start that finds the first one's state."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from nats.js.api import StreamConfig

from labfleet.cli.registry import load_all
from labfleet.cli.stack import redact_url
from labfleet.embedded.ports import free_port

pytestmark = pytest.mark.integration

READY = "Ctrl-C stops everything"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory outside pytest's own temporary root.

    The embedded PostgreSQL runs as an unprivileged user when tests run as root, and
    pytest keeps resetting its root (``/tmp/pytest-of-<user>``) to mode 0700, which would
    lock that user out of its data directory in the middle of a test.
    """
    path = Path(tempfile.mkdtemp(prefix="labfleet-up-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Up:
    """One ``labfleet up`` process and its console output."""

    def __init__(self, data_dir: Path, port: int, log: Path, keep_urls: bool = False) -> None:
        dropped = {"LABFLEET_DATA_DIR"} | (
            set() if keep_urls else {"LABFLEET_NATS_URL", "LABFLEET_DATABASE_URL"})
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        self.log = log
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labfleet.cli.main", "up", "--data-dir", str(data_dir),
                 "--port", str(port), "--grace", "10"],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text, start)
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"labfleet up exited ({self.proc.returncode}) before "
                                     f"printing {pattern!r}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text[-4000:]}")
            time.sleep(0.1)

    def pid_of(self, what: str, start: int = 0, timeout: float = 5) -> int:
        return int(self.wait_for(what, timeout, start).group(1))

    def interrupt(self, timeout: float = 45) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"labfleet up did not stop on SIGINT:\n{self.text[-4000:]}")

    def ensure_gone(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def operator_url(data_dir: Path) -> str:
    """The running stack's NATS as its admin reaches it (the CLI's own lookup)."""
    from labfleet.cli.health import resolve_nats_url

    url = resolve_nats_url(data_dir)
    assert url and "operator:" in url, url
    return url


async def write_state(nats_url: str, database_url: str, token: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="UPTEST", subjects=["uptest.>"]))
        await js.publish(f"uptest.{token}", token.encode())
    finally:
        await nc.close()
    db = await asyncpg.connect(database_url)
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS uptest (token text PRIMARY KEY)")
        await db.execute("INSERT INTO uptest VALUES ($1)", token)
    finally:
        await db.close()


async def read_state(nats_url: str, database_url: str, token: str) -> tuple[bytes, list[str]]:
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.jetstream().get_last_msg("UPTEST", f"uptest.{token}")
    finally:
        await nc.close()
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch("SELECT token FROM uptest")
    finally:
        await db.close()
    return msg.data, [r["token"] for r in rows]


def test_up_supervises_stops_cleanly_and_keeps_state(tmp_path: Path, unique: str) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    services = [e.name for e in load_all() if e.available]
    print(f"\n[labfleet tests] labfleet up with services: {', '.join(services) or 'none built yet'}")

    first = Up(data_dir, port, tmp_path / "first.log")
    pids: list[int] = []
    try:
        first.wait_for(READY, 120)
        nats_pid = first.pid_of(r"embedded nats-server \(pid (\d+)\)")
        pg_pid = first.pid_of(r"PostgreSQL: embedded \(pid (\d+)\)")
        service_pids = {name: first.pid_of(rf"started {name} \(pid (\d+)\)") for name in services}
        for name, pid in service_pids.items():
            assert int((data_dir / "run" / f"{name}.pid").read_text()) == pid
        endpoints = json.loads((data_dir / "run" / "endpoints.json").read_text())

        # a second `up` on the same data dir refuses, naming the first
        second = subprocess.run(
            [sys.executable, "-m", "labfleet.cli.main", "up", "--data-dir", str(data_dir),
             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"pid {first.proc.pid}" in second.stderr and "already running" in second.stderr

        asyncio.run(write_state(operator_url(data_dir), endpoints["database_url"], unique))

        if "gateway" in services:
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            seen = r.json()["services"]
            for name in services:
                if name in seen:
                    assert seen[name]["status"] == "up", r.text
            # degraded (503) only while services the gateway expects are not built yet
            assert r.status_code == (200 if set(seen) <= set(services) else 503), r.text

        if services:
            victim = next((s for s in services if s != "gateway"), services[0])
            mark = len(first.text)
            os.kill(service_pids[victim], signal.SIGKILL)
            first.wait_for(rf"{victim} crashed: killed by SIGKILL", 15, mark)
            service_pids[victim] = first.pid_of(
                rf"started {victim} \(pid (\d+), restart 1\)", mark, timeout=15)
            assert alive(service_pids[victim])
            first.wait_for(rf"crashes: {victim} 1", 5, mark)
        else:
            print("[labfleet tests] no service is built yet: crash/restart through "
                  "`labfleet up` not exercised (tests/integration/test_cli_supervisor.py covers "
                  "the supervisor with stand-in processes)")
        pids = [nats_pid, pg_pid, *service_pids.values()]
        assert all(alive(pid) for pid in pids)
    finally:
        code = first.interrupt()
    assert code == 0, first.text[-4000:]
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"processes {left} outlived labfleet up:\n{first.text[-3000:]}"
    assert not (data_dir / "run" / "endpoints.json").exists()
    assert "stopped" in first.text.splitlines()[-1]

    key = (data_dir / "credential.key").read_text()
    again = Up(data_dir, port, tmp_path / "again.log")
    try:
        again.wait_for(READY, 120)
        endpoints = json.loads((data_dir / "run" / "endpoints.json").read_text())
        data, rows = asyncio.run(read_state(operator_url(data_dir), endpoints["database_url"],
                                            unique))
        assert data == unique.encode()
        assert rows == [unique]
        # the credential key was generated once, kept private, and never printed
        assert (data_dir / "credential.key").read_text() == key
        assert (data_dir / "credential.key").stat().st_mode & 0o777 == 0o600
        assert key.strip() not in first.text + again.text
    finally:
        code = again.interrupt()
    assert code == 0, again.text[-4000:]


def test_up_uses_configured_servers_and_starts_none(tmp_path: Path) -> None:
    """With LABFLEET_NATS_URL / LABFLEET_DATABASE_URL set, `up` runs the services on them."""
    from labfleet.embedded import start_nats, start_postgres

    nats_server = start_nats(tmp_path / "nats")
    postgres = start_postgres(tmp_path / "pg")
    data_dir = tmp_path / "data"
    up = None
    try:
        # a server run by someone else: the services log in as its URL says
        env_urls = {"LABFLEET_NATS_URL": nats_server.operator_url,
                    "LABFLEET_DATABASE_URL": postgres.url}
        os.environ.update(env_urls)
        try:
            up = Up(data_dir, free_port(), tmp_path / "up.log", keep_urls=True)
        finally:
            for key in env_urls:
                os.environ.pop(key)
        up.wait_for(READY, 120)
        text = up.text
        assert f"NATS: {redact_url(nats_server.operator_url)} (from LABFLEET_NATS_URL)" in text
        assert nats_server.identities.operator_password() not in text
        assert "(from LABFLEET_DATABASE_URL)" in text
        assert "embedded" not in text
        assert not (data_dir / "nats").exists() and not (data_dir / "postgres").exists()
        services = [e.name for e in load_all() if e.available]
        if services:  # they answer on the configured NATS, so they were handed its URL
            pongs = asyncio.run(_ping(nats_server.operator_url, services))
            assert all(not isinstance(p, str) for p in pongs.values()), pongs
        assert up.interrupt() == 0
    finally:
        if up is not None:
            up.ensure_gone()
        nats_server.stop()
        postgres.stop()


async def _ping(url: str, names: list[str]) -> dict[str, object]:
    from labfleet.cli.health import ping_all

    return dict(await ping_all(url, names, timeout=5))


def test_a_dead_embedded_server_is_started_again_on_the_same_address(tmp_path: Path,
                                                                     unique: str) -> None:
    """What ``labfleet up`` does every second: NATS killed outright and PostgreSQL stopped
    (a fast shutdown) come back where the services look for them, with their data."""
    from labfleet.cli.datadir import RunFiles
    from labfleet.cli.stack import start_stack
    from labfleet.shared.settings import Settings

    said: list[str] = []
    data_dir = tmp_path / "data"
    stack = start_stack(Settings(nats_url=None, database_url=None), data_dir, RunFiles(data_dir),
                        said.append)
    try:
        nats_url, db_url = stack.nats_url, stack.database_url
        operator = stack.operator_url
        asyncio.run(write_state(operator, db_url, unique))
        assert stack.revive(said.append) == []  # both alive: nothing is touched
        old_nats, old_pg = stack.nats.process.pid, stack.postgres_pid  # type: ignore[union-attr]
        os.kill(old_nats, signal.SIGKILL)
        os.kill(old_pg, signal.SIGINT)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while alive(old_pg) or stack.nats.process.poll() is None:  # type: ignore[union-attr,arg-type]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert stack.revive(said.append) == ["nats-server", "postgres"]
        assert stack.nats.url == nats_url and stack.postgres.url == db_url  # type: ignore[union-attr]
        assert stack.nats.process.pid != old_nats and stack.postgres_pid != old_pg  # type: ignore[union-attr]
        data, rows = asyncio.run(read_state(operator, db_url, unique))
        assert data == unique.encode() and rows == [unique]
        assert any("died (signal 9)" in line for line in said), said
        assert any("PostgreSQL is back" in line for line in said), said
    finally:
        stack.stop(said.append)
