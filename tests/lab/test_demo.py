"""`labfleet up --demo`: the stack on its embedded defaults with a small lab registered."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labfleet.embedded.ports import free_port

pytestmark = pytest.mark.lab

DEMO_LAB_DIR = "/var/lib/labfleet-lab-demo-test"


def test_up_demo_registers_a_live_lab(lab_paths, lab_images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    env.update(LABFLEET_LAB_DIR=DEMO_LAB_DIR, LABFLEET_MONITOR_INTERVAL_S="1",
               LABFLEET_LOG_JSON="false")
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labfleet.cli.main", "up", "--demo",
             "--data-dir", str(tmp_path / "data"), "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # the images are built (lab_images)
        while "demo: the lab is registered" not in log_path.read_text():
            text = log_path.read_text()
            assert "demo: the lab could not" not in text, text[-3000:]
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(1)
        creds = dict(line.split(": ", 1) for line in
                     (tmp_path / "data" / "admin-credentials").read_text().splitlines()
                     if ": " in line)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                           headers={"Authorization": f"Bearer {creds['api_token']}"})
        deadline = time.monotonic() + 60
        while True:
            servers = api.get("/api/v1/build-servers").json()["items"]
            if len(servers) == 2 and all(s["status"] in ("online", "degraded") for s in servers):
                break
            assert time.monotonic() < deadline, servers
            time.sleep(1)
        assert {s["name"] for s in servers} == {"build1", "build2"}
        assert all(s["sample"] for s in servers)  # polled live over SSH
        hosts = api.get("/api/v1/qemu-hosts").json()
        items = hosts["items"] if isinstance(hosts, dict) else hosts
        assert [h["name"] for h in items] == ["qemu1"]
        api.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # a failed test: stopped as Ctrl-C would, so that the
            proc.send_signal(signal.SIGINT)  # embedded servers it started stop with it
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        subprocess.run([sys.executable, "-m", "labfleet.cli.main", "lab", "down"],
                       env={**env, "LABFLEET_LAB_DIR": DEMO_LAB_DIR}, check=False,
                       capture_output=True)
    assert not Path(DEMO_LAB_DIR).exists()
