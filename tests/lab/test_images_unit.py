"""Pure pieces of the lab: the initramfs archive writer and the SD-card format."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labfleet.lab.images import _cpio


def test_cpio_archive_is_read_by_cpio(tmp_path: Path) -> None:
    if not shutil.which("cpio"):
        pytest.skip("cpio is not installed")
    archive = _cpio([("bin", 0o040755, b""), ("bin/hello", 0o100755, b"#!/bin/sh\necho hi\n"),
                     ("bin/sh", 0o120777, b"busybox")])
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True)
    out = listing.stdout.decode()
    assert "bin/hello" in out and "bin/sh -> busybox" in out
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "bin" / "hello").read_text() == "#!/bin/sh\necho hi\n"


def test_card_round_trip(tmp_path: Path) -> None:
    if not shutil.which("mke2fs") or not shutil.which("debugfs"):
        pytest.skip("e2fsprogs (mke2fs, debugfs) is not installed")
    from labfleet.lab.boards import make_card, read_card

    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"K" * 5000)
    initrd.write_bytes(b"I" * 3000)
    card = make_card(kernel, initrd, tmp_path / "card.img", cmdline="quiet labfleet.x=1", size_mb=8)
    found = read_card(card, tmp_path / "out")
    assert found["Image"].read_bytes() == kernel.read_bytes()
    assert found["initrd"].read_bytes() == initrd.read_bytes()
    assert found["cmdline"].read_text().strip() == "quiet labfleet.x=1"
    blank = tmp_path / "blank.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(blank), "8M"], check=True)
    assert read_card(blank, tmp_path / "out2") == {}


def test_station_tools_interpreter_is_made_reachable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Python under a directory others cannot enter (pyenv in /root, 0700) gets search
    permission on the way, and only that; directories already open are left alone."""
    import stat

    from labfleet.lab.station import open_path_to_interpreter

    home = tmp_path / "home"
    bindir = home / "py" / "bin"
    bindir.mkdir(parents=True)
    interpreter = bindir / "python3"
    interpreter.write_text("")
    home.chmod(0o700)
    try:
        # (pytest's own temporary directories are 0700 too: opened on the way as well)
        assert str(home) in open_path_to_interpreter(str(interpreter))
        assert stat.S_IMODE(home.stat().st_mode) == 0o701
        assert stat.S_IMODE((home / "py").stat().st_mode) == 0o755  # was open already
        assert open_path_to_interpreter(str(interpreter)) == []
    finally:
        home.chmod(0o755)
