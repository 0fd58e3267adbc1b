"""The server-side SHA-256 the builder compares every artifact with: the command it runs
(OpenSSL when the server has it, else coreutils) and the two output forms it reads."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from labfleet.builder.domain import remote_plan as plan


def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, data in (("Image", os.urandom(300_000)), ("a b*.dtb", b"x"), ("empty", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        out[str(path)] = hashlib.sha256(data).hexdigest()
    return out


def run(argv: list[str], path_env: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          env={"PATH": path_env}).stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_checksums_with_openssl(tmp_path: Path) -> None:
    expected = files(tmp_path)
    out = run(plan.sha256sums(list(expected)), os.environ["PATH"])
    assert "*" + next(iter(expected)) in out  # openssl's form was the one used
    assert plan.parse_sha256sums(out) == expected


def test_checksums_without_openssl_fall_back_to_sha256sum(tmp_path: Path) -> None:
    expected = files(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "sha256sum"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed"
        (bin_dir / tool).symlink_to(found)
    out = run(plan.sha256sums(list(expected)), str(bin_dir))
    assert "  " + next(iter(expected)) in out  # coreutils' form
    assert plan.parse_sha256sums(out) == expected


def test_a_missing_file_fails_the_command(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        run(plan.sha256sums([str(tmp_path / "nothing")]), os.environ["PATH"])


def test_parse_reads_both_forms() -> None:
    digest = "ab" * 32
    assert plan.parse_sha256sums(f"{digest}  /w/a  b\n{digest.upper()} */w/c\n") == {
        "/w/a  b": digest, "/w/c": digest}
