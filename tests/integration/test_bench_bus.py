"""bench/bus.py runs end to end on the test stack and accounts for every event it sent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bus.py"


def test_bus_benchmark_prints_its_figures_and_loses_nothing(nats_url: str, database_url: str) -> None:
    env = {**os.environ, "LABFLEET_NATS_URL": nats_url, "LABFLEET_DATABASE_URL": database_url}
    run = subprocess.run(
        [sys.executable, str(BENCH), "--rate", "300", "--seconds", "2", "--warmup", "0.5",
         "--rounds", "1"],
        env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["lost"] == 0
    # a light load is kept up with: the window's rate is the offered one
    assert 270 <= result["events_per_s"] <= 310, result
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]
    assert result["to_handler_p99_ms"] < result["max_ms"]
    assert result["baseline_events_per_s"] > 270
    rounds = [json.loads(line.split(": ", 1)[1]) for line in run.stderr.splitlines()
              if line.startswith("round 1 labfleet: ")]
    assert rounds and rounds[0]["handled"] == rounds[0]["sent"] > 0.9 * 300 * 2.5
