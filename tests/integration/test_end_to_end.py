"""The foundation's one real path, end to end, through `labfleet up`.

`labfleet up` runs every service as its own process on its own embedded NATS and
PostgreSQL; the test talks to it only as a user would (HTTP with the admin's token),
against a real OpenSSH server on loopback:

1. register a build server (SSH, host key, capabilities) — and see specific refusals;
2. the monitor's samples reach the gateway;
3. submit a build of a C program from a git repository; follow its log live; download
   the artifact and check its SHA-256 and that it runs.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labfleet.embedded.ports import free_port

pytestmark = pytest.mark.integration

HELLO_C = '#include <stdio.h>\nint main(void){puts("hello from labfleet");return 0;}\n'
MAKEFILE = "hello: hello.c\n\t$(CC) -O2 -o hello hello.c\n\t@echo built-the-hello-binary\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def hello_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "hello"
    repo.mkdir()
    (repo / "hello.c").write_text(HELLO_C)
    (repo / "Makefile").write_text(MAKEFILE)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "hello")
    return repo, git(repo, "rev-parse", "HEAD")


@pytest.fixture
def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "up"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    env.update(LABFLEET_MONITOR_INTERVAL_S="1", LABFLEET_LOG_JSON="false",
               # the build's repository is a local path on the build server
               LABFLEET_BUILD_ALLOWED_URL_SCHEMES="https,http,git,ssh,file")
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "labfleet.cli.main", "up", "--data-dir", str(data),
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-4000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-4000:]
            time.sleep(0.5)
        creds = dict(line.split(": ", 1) for line in
                     (data / "admin-credentials").read_text().splitlines() if ": " in line)
        client = httpx.Client(base_url=base, timeout=60,
                              headers={"Authorization": f"Bearer {creds['api_token']}"})
        yield client, proc, tmp_path / "up.log"
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_register_monitor_build_download(stack, sshd, hello_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api, proc, log_path = stack
    repo, commit = hello_repo

    # -- 1. registration: refusals first, each specific, nothing registered ------------
    base_form = {"hostname": "e2e-builder", "address": sshd.host, "ssh_port": sshd.port,
                 "username": sshd.username, "architectures": ["x86_64"]}
    r = api.post("/api/v1/build-servers", json={**base_form, "password": "not-the-password"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "authentication_failed"
    r = api.post("/api/v1/build-servers",
                 json={**base_form, "ssh_port": free_port(), "private_key": sshd.private_key})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "connection_refused"
    assert api.get("/api/v1/build-servers").json()["total"] == 0

    r = api.post("/api/v1/build-servers", json={**base_form, "private_key": sshd.private_key})
    assert r.status_code == 201, r.text
    server = r.json()
    caps = server["capabilities"]
    assert caps["cpu_cores"] >= 1 and caps["memory_mb"] > 0 and caps["disk_free_gb"] > 0
    assert any(t["arch"] == "x86_64" and "gcc" in t["compiler"] for t in caps["toolchains"])
    assert sshd.private_key.split("\n")[1] not in r.text  # the secret never comes back

    # -- 2. the monitor polls it; the gateway shows the sample ------------------------
    deadline = time.monotonic() + 20
    detail = {}
    while time.monotonic() < deadline:
        detail = api.get(f"/api/v1/build-servers/{server['id']}").json()
        if detail.get("sample") and detail.get("status") == "online":
            break
        time.sleep(0.5)
    assert detail.get("sample"), detail
    assert detail["sample"]["mem_total_mb"] > 0

    # -- 3. a build, placed automatically, log followed live, artifact verified -------
    r = api.post("/api/v1/builds", json={"repo_url": str(repo), "ref": "main",
                                         "arch": "x86_64", "artifacts": ["hello"]})
    assert r.status_code == 202, r.text
    build_id = r.json()["id"]
    with api.stream("GET", f"/api/v1/builds/{build_id}/log", params={"follow": 1},
                    timeout=300) as stream:
        log_text = "".join(stream.iter_text())
    assert "built-the-hello-binary" in log_text, log_text[-2000:]

    deadline = time.monotonic() + 60
    build = {}
    while time.monotonic() < deadline:
        build = api.get(f"/api/v1/builds/{build_id}").json()
        if build["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert build["status"] == "succeeded", build
    assert build["commit"] == commit
    assert build["server_name"] == "e2e-builder"

    arts = api.get("/api/v1/artifacts", params={"build_id": build_id}).json()
    assert [a["name"] for a in arts] == ["hello"]
    blob = api.get(arts[0]["download_url"])
    assert blob.status_code == 200
    assert hashlib.sha256(blob.content).hexdigest() == arts[0]["sha256"]
    binary = tmp_path / "hello.bin"
    binary.write_bytes(blob.content)
    binary.chmod(0o755)
    assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == "hello from labfleet\n"

    # -- no service crashed on the way; Ctrl-C stops everything cleanly ---------------
    assert " crashed: " not in log_path.read_text()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
