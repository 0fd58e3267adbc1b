"""What `labfleet build-server add` and `labfleet qemu-host add` make of their SSH secret
and labels before anything is sent: bad input stops with what was wrong and what to do."""
from __future__ import annotations

from pathlib import Path

import pytest

from labfleet.cli.api import CliError, labels, ssh_secret


def test_the_key_file_is_sent_as_text(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    assert ssh_secret(key, None) == {"private_key": key.read_text()}


def test_a_key_file_wins_over_a_password(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    monkeypatch.setenv("LAB_PW", "s3cret")
    assert ssh_secret(key, "LAB_PW") == {"private_key": "k"}


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"cannot read the private key .*missing.*No such file"):
        ssh_secret(tmp_path / "missing", None)


def test_the_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_PW", "s3cret")
    assert ssh_secret(None, "LAB_PW") == {"password": "s3cret"}


def test_an_unset_password_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_PW", raising=False)
    with pytest.raises(CliError, match="the environment variable LAB_PW is not set"):
        ssh_secret(None, "LAB_PW")


def test_no_secret_at_all_says_how_to_give_one() -> None:
    with pytest.raises(CliError, match=r"give --key FILE \(preferred\) or --password-env VAR"):
        ssh_secret(None, None)


def test_labels_are_split_at_the_first_equals_sign_and_trimmed() -> None:
    assert labels(["rack = 3", "url=http://x/?a=b"]) == {"rack": "3", "url": "http://x/?a=b"}
    assert labels([]) == {}


@pytest.mark.parametrize("bad", ["rack", "=3", ""])
def test_a_malformed_label_is_quoted_back(bad: str) -> None:
    with pytest.raises(CliError, match=f"label {bad!r} must look like key=value"):
        labels([bad])
