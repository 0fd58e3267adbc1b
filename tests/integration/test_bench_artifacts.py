"""bench/artifacts.py runs end to end: it stores, fetches and checks a real file, and
accounts for the CPU the upload took."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "artifacts.py"


def test_artifact_benchmark_prints_its_figures(nats_url: str) -> None:
    # the gateway it starts writes first-run admin credentials: it wants a database with
    # no users yet, so the bench starts an embedded PostgreSQL of its own
    env = {k: v for k, v in os.environ.items() if k != "LABFLEET_DATABASE_URL"}
    env["LABFLEET_NATS_URL"] = nats_url
    # large enough that each side's share passes the 0.02 CPU-s a program must take to
    # be listed (at 8 MB, sshd's part of an sftp get is about 0.015 s)
    run = subprocess.run([sys.executable, str(BENCH), "--size-mb", "64", "--rounds", "1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["size_mb"] == 64 and result["rounds"] == 1
    for key in ("upload_ratio_vs_sftp", "download_ratio_vs_sftp", "labfleet_upload_s",
                "plain_sftp_up_s", "labfleet_download_s", "plain_sftp_down_s", "store_only_s"):
        assert result[key] > 0, key
    # the CPU the upload took, in all and per program, and the ceiling it sets
    assert result["labfleet_upload_cpu_s"] > 0 and result["plain_sftp_up_cpu_s"] > 0
    assert result["cores"] == os.cpu_count()
    assert result["upload_ratio_cpu_ceiling"] == pytest.approx(
        result["plain_sftp_up_s"] * result["cores"] / result["labfleet_upload_cpu_s"], rel=0.01)
    # the server side of the transfer ran in the sshd the bench started
    assert "sshd" in result["labfleet_upload_cpu_by_program"], result
    assert "sshd" in result["plain_sftp_up_cpu_by_program"], result
