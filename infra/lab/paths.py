"""Where the lab keeps its state and its caches.

The lab directory holds everything one running lab created (its state file, keys, host
roots, board cards); ``lab down`` removes it.  The cache directory survives between runs
on one machine: the Linux source tree, built kernels and images, the git repositories.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/lib/labfleet-lab")
DEFAULT_CACHE_DIR = Path("/var/cache/labfleet/lab")


@dataclass(frozen=True)
class LabPaths:
    lab_dir: Path
    cache_dir: Path

    @classmethod
    def from_env(cls, lab_dir: Path | str | None = None) -> LabPaths:
        lab = Path(lab_dir or os.environ.get("LABFLEET_LAB_DIR") or DEFAULT_LAB_DIR)
        cache = Path(os.environ.get("LABFLEET_LAB_CACHE") or DEFAULT_CACHE_DIR)
        return cls(lab_dir=lab.absolute(), cache_dir=cache.absolute())

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.lab_dir / ".lock"

    def host_dir(self, name: str) -> Path:
        return self.lab_dir / "hosts" / name

    def board_dir(self, name: str) -> Path:
        return self.lab_dir / "boards" / name
