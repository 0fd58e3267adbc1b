"""Schemathesis over the gateway's ``/openapi.json``, with a valid token, against the real
services (inventory, monitor, scheduler, builder, deployer, alerter on real NATS and
PostgreSQL): no answer may be a 5xx, and every status must be one the operation declares.

Bounded: a few examples per operation, a per-request timeout, and a time budget for the
whole run.  tests/integration/fuzz_hooks.py keeps every request away from real hosts:
addresses become loopback literals, ports and URLs a loopback port where nothing listens.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from .test_gateway_support import RunningGateway, gateway  # noqa: F401

pytestmark = pytest.mark.integration

SERVICES = ("inventory", "monitor", "scheduler", "builder", "deployer", "alerter")
#: test cases per operation, and the run's time budget (the test's own timeout is above)
MAX_EXAMPLES = 25
MAX_TIME_S = 150
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released without listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(MAX_TIME_S + 240)
async def test_no_server_error_and_no_undeclared_status(
        gateway: RunningGateway, settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import importlib

    from cryptography.fernet import Fernet

    settings = settings_factory(credential_key=Fernet.generate_key().decode(),
                                monitor_interval_s=2.0)
    services = [importlib.import_module(f"labfleet.{name}.main").create(settings)
                for name in SERVICES]
    for service in services:
        await service.start()
    report = tmp_path / "report"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
           "LABFLEET_FUZZ_CLOSED_PORT": str(closed_loopback_port()),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep
           + os.environ.get("PYTHONPATH", ""), "NO_COLOR": "1"}
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS), "run", f"{gateway.base_url}/openapi.json",
            "--header", f"Authorization: Bearer {gateway.admin_token}",
            "--checks", "not_a_server_error,status_code_conformance,allow_header_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S),
            "--request-timeout", "100", "--workers", "2", "--seed", "1",
            "--no-shrink", "--suppress-health-check", "all",
            "--report", "ndjson", "--report-dir", str(report),
            cwd=str(Path(__file__).resolve().parents[2]), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
    finally:
        for service in reversed(services):
            await service.stop()
    elapsed = time.monotonic() - started
    text = out.decode(errors="replace")
    print(f"\n[fuzz] schemathesis ran {elapsed:.0f} s, exit {proc.returncode}\n{text[-6000:]}")
    requests = sum(1 for _ in _events(report, "ScenarioFinished"))
    assert requests, f"schemathesis ran no scenario:\n{text[-3000:]}"
    assert proc.returncode == 0, f"schemathesis found failures:\n{text[-12000:]}"


def _events(report: Path, kind: str):  # type: ignore[no-untyped-def]
    for path in report.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if kind in event:
                yield event[kind]
