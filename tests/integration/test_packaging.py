"""The installable package (what the container image's ``pip install .`` puts in place)
carries every file the services read at run time, not only their Python modules:
migrations, templates, static files, the Alembic environment, the lab's scripts."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: the folders setup.py maps onto labfleet.<part>
ROOTS = {"shared": "labfleet/shared", "cli": "labfleet/cli",
         "infra/embedded": "labfleet/embedded", "infra/lab": "labfleet/lab",
         **{f"services/{p.name}": f"labfleet/{p.name}" for p in (ROOT / "services").iterdir()
            if (p / "__init__.py").exists()}}
#: read by people, not by the program
NOT_INSTALLED = (".md", ".gitignore")


def test_the_wheel_holds_every_file_the_program_reads(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                             text=True, check=True).stdout.split()
    # htmx is fetched by the set-up, not tracked: it must go in wherever it is present
    vendor = [str(p.relative_to(ROOT)) for p in
              (ROOT / "services/gateway/static/vendor").glob("*.js")]
    # built from a copy: an earlier build's build/ folder in the checkout would hide a
    # file the package description leaves out
    source = tmp_path / "src"
    for path in [*tracked, *vendor]:
        if (ROOT / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, source / path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = tmp_path.glob("labfleet-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected: dict[str, str] = {}
    for path in [*tracked, *vendor]:
        for folder, package in ROOTS.items():
            if path.startswith(folder + "/") and not path.endswith(NOT_INSTALLED):
                expected[path] = package + path[len(folder):]
    assert any("/migrations/" in p for p in expected.values())  # the mapping found them
    missing = sorted(path for path, target in expected.items() if target not in inside)
    assert not missing, f"not in {wheel.name}: {missing}"
