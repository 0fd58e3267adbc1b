"""`labfleet lab down` on a lab whose up never got to record it."""
from __future__ import annotations

from pathlib import Path

from labfleet.lab import lab as labmod
from labfleet.lab.paths import LabPaths


def paths(tmp_path: Path) -> LabPaths:
    return LabPaths(lab_dir=tmp_path / "lab", cache_dir=tmp_path / "cache")


def test_an_up_killed_before_recording_the_lab_leaves_nothing_after_down(tmp_path: Path) -> None:
    p = paths(tmp_path)
    (p.lab_dir / "keys").mkdir(parents=True)  # what up makes before building its kernels
    (p.lab_dir / "keys" / "id_ed25519").write_text("key")
    (p.lab_dir / ".lock").touch()
    said: list[str] = []
    assert labmod.down(p, said.append) is True
    assert not p.lab_dir.exists()
    assert "unfinished lab" in said[-1]


def test_a_directory_that_is_not_an_unfinished_lab_is_left_alone(tmp_path: Path) -> None:
    p = paths(tmp_path)
    said: list[str] = []
    assert labmod.down(p, said.append) is False  # nothing there at all
    (p.lab_dir / "keys").mkdir(parents=True)
    (p.lab_dir / "someone-elses-file").write_text("keep me")
    assert labmod.down(p, said.append) is False
    assert (p.lab_dir / "someone-elses-file").read_text() == "keep me"
    assert said == [f"no lab in {p.lab_dir}"] * 2
