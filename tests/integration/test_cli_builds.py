"""The build-server, build and artifact commands against a real `labfleet up`.

The commands find the gateway and the admin's token from the data directory that
`labfleet up` wrote (``LABFLEET_DATA_DIR``), as on a developer's machine; the build server
is the real sshd fixture; the build compiles a C program from a git repository.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .test_end_to_end import hello_repo, stack  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def labfleet(data_dir: Path, *args: str, timeout: float = 120,
             **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    environ.update(LABFLEET_DATA_DIR=str(data_dir), COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-m", "labfleet.cli.main", *args], env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_round_trip(stack, sshd, hello_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, _, _ = stack
    data = tmp_path / "up"
    repo, commit = hello_repo

    added = labfleet(data, "build-server", "add", "cli-builder", "--address", sshd.host,
                     "--port", str(sshd.port), "--user", sshd.username,
                     "--key", str(sshd.private_key_path), "--arch", "x86_64")
    assert added.returncode == 0, added.stderr
    assert "registered cli-builder" in added.stdout and "SHA256:" in added.stdout
    assert "x86_64: gcc" in added.stdout

    again = labfleet(data, "build-server", "add", "cli-builder", "--address", sshd.host,
                     "--port", str(sshd.port), "--user", sshd.username,
                     "--key", str(sshd.private_key_path))
    assert again.returncode == 1
    assert "duplicate_name" in again.stderr and "what to do:" in again.stderr

    deadline = time.monotonic() + 30
    while "online" not in (listed := labfleet(data, "build-server", "list")).stdout:
        assert time.monotonic() < deadline, listed.stdout + listed.stderr
        time.sleep(0.5)

    submitted = labfleet(data, "build", "submit", "--repo", str(repo), "--ref", "main",
                         "--arch", "x86_64", "--artifact", "hello")
    assert submitted.returncode == 0, submitted.stderr
    build_id = submitted.stdout.split()[0]
    uuid.UUID(build_id)
    assert "queued at position" in submitted.stdout

    followed = labfleet(data, "build", "logs", "-f", build_id)
    assert followed.returncode == 0, followed.stderr
    assert "built-the-hello-binary" in followed.stdout

    deadline = time.monotonic() + 30
    while "succeeded" not in (shown := labfleet(data, "build", "show", build_id)).stdout:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.5)
    assert f"succeeded on cli-builder" in shown.stdout and commit in shown.stdout
    assert "artifact hello" in shown.stdout

    out = tmp_path / "downloads"
    out.mkdir()
    got = labfleet(data, "artifact", "get", build_id, "hello", "-o", str(out))
    assert got.returncode == 0, got.stderr
    digest = hashlib.sha256((out / "hello").read_bytes()).hexdigest()
    assert f"sha256 {digest}  (verified)" in got.stdout
    assert digest in shown.stdout  # the checksum stored with the build
    (out / "hello").chmod(0o755)
    assert subprocess.run([str(out / "hello")], capture_output=True, text=True,
                          check=True).stdout.strip() == "hello from labfleet"
    listed_artifacts = labfleet(data, "artifact", "list", "--ref", "main", "--arch", "x86_64")
    assert build_id in listed_artifacts.stdout and digest in listed_artifacts.stdout

    assert "pinned" in labfleet(data, "build", "pin", build_id).stdout
    assert "release-1" in labfleet(data, "build", "tag", build_id, "release-1").stdout
    history = labfleet(data, "build", "list")
    assert build_id in history.stdout and "pinned release-1" in history.stdout

    server = labfleet(data, "build-server", "show", "cli-builder")
    assert server.returncode == 0, server.stderr
    assert "average x86_64 (plain make)" in server.stdout and build_id[:8] in server.stdout

    maint = labfleet(data, "build-server", "maintenance", "cli-builder", "--reason", "disk")
    assert maint.returncode == 0 and "cli-builder: maintenance" in maint.stdout, maint.stderr
    lifted = labfleet(data, "build-server", "maintenance", "cli-builder", "--off")
    assert "cli-builder: active" in lifted.stdout, lifted.stderr

    unknown = labfleet(data, "build", "show", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "not_found" in unknown.stderr
    refused = labfleet(data, "build", "list", LABFLEET_TOKEN="not-a-token")
    assert refused.returncode == 1 and "refused the token" in refused.stderr
    nowhere = labfleet(tmp_path / "no-such-dir", "build", "list")
    assert nowhere.returncode == 1 and "labfleet up" in nowhere.stderr

    removed = labfleet(data, "build-server", "remove", "cli-builder", "--yes")
    assert removed.returncode == 0 and "decommissioned cli-builder" in removed.stdout, \
        removed.stderr
