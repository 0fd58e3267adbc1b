"""Fixtures shared by every test: real NATS and PostgreSQL.

``LABFLEET_NATS_URL`` / ``LABFLEET_DATABASE_URL`` select running servers; otherwise the
embedded ones are started in a temporary directory for the session (and the choice is
printed, so a run says what it tested against).  Testcontainers is used only when a
Docker engine answers; this machine's kind has none, so the fallback is the embedded
servers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def service_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="labfleet-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_server(service_tmp: Path):  # type: ignore[no-untyped-def]
    """The embedded nats-server with its identities; None when LABFLEET_NATS_URL is given."""
    if os.environ.get("LABFLEET_NATS_URL"):
        yield None
        return
    from labfleet.embedded import start_nats

    server = start_nats(service_tmp / "nats")
    why = "a Docker engine answers, but" if _docker_answers() else "no Docker engine answers;"
    print(f"\n[labfleet tests] NATS: {why} using an embedded nats-server at {server.url} "
          "(services log in with their own identities, tests as the operator)")
    yield server
    server.stop()
    report_permission_violations(server.log_path)


def report_permission_violations(log_path: Path) -> None:
    """Print what the server refused during the session, by identity, so a missing grant
    in shared/natsauth/permissions.py shows up next to the test that needed it."""
    import re

    seen: dict[str, int] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if "Violation" in line and "labfleet-" in line:
            name = re.search(r'"[^"]*labfleet-([\w-]+)"', line)
            what = re.search(r'(Publish|Subscription) Violation.*?Subject "([^"]+)"', line)
            if name and what:
                key = f"{name.group(1)}: {what.group(1).lower()} {what.group(2)}"
                seen[key] = seen.get(key, 0) + 1
    if seen:
        print("\n[labfleet tests] NATS refused (identity: action subject ×count):")
        for key, count in sorted(seen.items()):
            print(f"  {key} ×{count}")


@pytest.fixture(scope="session")
def nats_url(nats_server) -> str:  # type: ignore[no-untyped-def]
    """The URL tests connect with: the operator's (the password is in it)."""
    if nats_server is None:
        url = os.environ["LABFLEET_NATS_URL"]
        print("\n[labfleet tests] NATS: using LABFLEET_NATS_URL")
        return url
    return str(nats_server.operator_url)


@pytest.fixture(scope="session")
def nats_identity_dir(nats_server) -> Path | None:  # type: ignore[no-untyped-def]
    """Where the services' NATS seeds are (None on a server given from outside)."""
    return None if nats_server is None else nats_server.identity_dir


@pytest.fixture(scope="session")
def database_url(service_tmp: Path) -> Iterator[str]:
    url = os.environ.get("LABFLEET_DATABASE_URL")
    if url:
        print(f"\n[labfleet tests] PostgreSQL: using LABFLEET_DATABASE_URL={url}")
        yield url
        return
    from labfleet.embedded import start_postgres

    server = start_postgres(service_tmp / "pg")
    print("\n[labfleet tests] PostgreSQL: using an embedded server (pgserver) "
          f"at {server.url} (no Docker engine for testcontainers)")
    yield server.url
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for names, schemas and subjects of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings_factory(nats_url: str, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                     nats_identity_dir: Path | None):
    from labfleet.shared.settings import Settings

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = dict(
            nats_url=nats_url, database_url=database_url, data_dir=tmp_path / "data",
            nats_identity_dir=nats_identity_dir,
            log_json=False, redelivery_backoff_s=[0.1, 0.2, 0.3], max_deliver=3,
            ack_wait_s=10.0,
        )
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def sshd(service_tmp: Path):  # type: ignore[no-untyped-def]
    """A real OpenSSH server on 127.0.0.1 (see tests/sshd.py)."""
    from tests.sshd import start_sshd

    server = start_sshd(service_tmp / "sshd")
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_url: str):  # type: ignore[no-untyped-def]
    """A plain NATS connection to the test server, closed after the test."""
    import nats

    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The lab's kernels and images are built before the first test when lab tests are
    selected, outside any test's time-out (three kernels: minutes on a fresh machine)."""
    if session.config.option.collectonly:
        return
    if not any(item.nodeid.startswith("tests/lab/") for item in session.items):
        return
    from tests.lab.conftest import prepare_images

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(message: str) -> None:
        if reporter is not None:
            reporter.write_line(message)
        else:
            print(message, flush=True)

    prepare_images(say)
