"""The data directory: one `labfleet up` at a time, secrets generated once, URLs redacted."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from labfleet.cli.datadir import DataDirBusy, DataDirLock, RunFiles, stack_secrets
from labfleet.cli.stack import redact_url
from labfleet.shared.settings import Settings


def test_a_second_lock_on_the_same_dir_is_refused_with_the_holder(tmp_path: Path) -> None:
    with DataDirLock(tmp_path):
        with pytest.raises(DataDirBusy) as caught:
            DataDirLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and str(tmp_path) in message
        assert "--data-dir" in message
    # released: the next one gets it
    with DataDirLock(tmp_path):
        pass


def test_secrets_are_generated_once_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = stack_secrets(settings, tmp_path)
    assert stack_secrets(settings, tmp_path) == first
    Fernet(first["LABFLEET_CREDENTIAL_KEY"].encode())  # a usable key
    assert (tmp_path / "credential.key").stat().st_mode & 0o777 == 0o600


def test_secrets_from_the_environment_win(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(data_dir=tmp_path, credential_key=key)
    assert stack_secrets(settings, tmp_path) == {"LABFLEET_CREDENTIAL_KEY": key}
    assert not (tmp_path / "credential.key").exists()


def test_pid_and_endpoint_files_round_trip(tmp_path: Path) -> None:
    run = RunFiles(tmp_path)
    assert run.read_pid("scheduler") is None
    run.write_pid("scheduler", 4242)
    assert run.read_pid("scheduler") == 4242
    run.remove_pid("scheduler")
    assert run.read_pid("scheduler") is None
    run.write_endpoints({"nats_url": "nats://127.0.0.1:1"})
    assert run.read_endpoints() == {"nats_url": "nats://127.0.0.1:1"}
    assert run.endpoints_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://lab:hunter2@db:5432/labfleet", "postgresql://lab:***@db:5432/labfleet"),
    ("nats://tok@nats-1:4222", "nats://***@nats-1:4222"),
    ("nats://user:pw@nats-1", "nats://user:***@nats-1"),
    ("postgresql://postgres:@/labfleet?host=/tmp/x", "postgresql://postgres:@/labfleet?host=/tmp/x"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_urls_are_printed_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
