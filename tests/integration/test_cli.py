"""The ``labfleet`` command as a user types it: wrong names, missing settings, health."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labfleet.cli.registry import SERVICE_NAMES, load_all
from labfleet.shared.service import Service

pytestmark = pytest.mark.integration


def labfleet(*args: str, env: dict[str, str] | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    return subprocess.run([sys.executable, "-m", "labfleet.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


async def labfleet_async(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The command in a subprocess while this test's event loop keeps serving."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labfleet.cli.main", *args, env={**base, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_run_with_an_unknown_service_lists_the_valid_names() -> None:
    result = labfleet("run", "schedular")
    assert result.returncode == 2
    assert "unknown service 'schedular'" in result.stderr
    for name in SERVICE_NAMES:
        assert name in result.stderr


def test_run_without_nats_or_database_says_what_to_set(tmp_path: Path) -> None:
    available = [e.name for e in load_all() if e.available]
    if not available:
        pytest.skip("no service is built yet, so none can be asked to start")
    result = labfleet("run", available[0], env={"LABFLEET_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "LABFLEET_NATS_URL is not set" in result.stderr
    assert "LABFLEET_DATABASE_URL is not set" in result.stderr
    assert "labfleet up" in result.stderr  # and the way around it


def test_services_lists_every_name_with_its_state() -> None:
    result = labfleet("services")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(SERVICE_NAMES)
    for line in lines:
        assert " available" in line or " unavailable: " in line


async def test_health_answers_for_a_running_service_and_fails_for_a_silent_one(
        settings_factory, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    env = {"LABFLEET_NATS_URL": settings.nats_url, "LABFLEET_DATA_DIR": str(tmp_path)}
    # the bare service frame answers the same ping every service answers; it runs under
    # a registered name only for the length of this test, on this session's own NATS
    frame = Service.create("alerter", settings)
    await frame.start()
    try:
        code, out = await labfleet_async("health", "alerter", "--timeout", "10", env=env)
        assert code == 0, out
        assert "alerter: alive" in out and frame.instance in out
    finally:
        await frame.stop()
    code, out = await labfleet_async("health", "alerter", "--timeout", "1", env=env)
    assert code == 1, out
    # "no instance listens", or "no answer within 1 s" if the server still routed to the
    # closing connection
    assert "alerter: NOT answering: no " in out, out


def test_health_with_an_unknown_name_or_no_nats_is_a_clear_error(tmp_path: Path) -> None:
    unknown = labfleet("health", "nope", env={"LABFLEET_NATS_URL": "nats://127.0.0.1:1"})
    assert unknown.returncode == 2 and "unknown service 'nope'" in unknown.stderr
    no_nats = labfleet("health", "gateway", env={"LABFLEET_DATA_DIR": str(tmp_path)})
    assert no_nats.returncode == 1 and "LABFLEET_NATS_URL is not set" in no_nats.stderr
    unreachable = labfleet("health", "gateway", "--timeout", "1",
                           env={"LABFLEET_NATS_URL": "nats://127.0.0.1:1"})
    assert unreachable.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in unreachable.stderr
