"""The emulated lab for the lab tests: brought up once per session, reused if already up.

``LABFLEET_LAB_DIR`` selects the lab directory; the tests default to their own
(``/var/lib/labfleet-lab-test``) so they never touch a lab someone brought up by hand.
The last test of ``test_lab.py`` brings it down and checks that nothing is left.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TEST_LAB_DIR = "/var/lib/labfleet-lab-test"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (namespaces, bridges, loop devices)"
    for tool in ("ip", "nsenter", "unshare", "qemu-system-x86_64", "qemu-system-aarch64",
                 "qemu-system-riscv64", "libvirtd", "ser2net", "sshd", "mke2fs", "debugfs"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (bash infra/setup.sh installs the lab's packages)"
    if not list(Path("/usr/src").glob("linux-source-*.tar.xz")):
        return "Debian's linux-source is not installed (bash infra/setup.sh installs it)"
    return None


@pytest.fixture(scope="session")
def lab_paths():  # type: ignore[no-untyped-def]
    reason = _missing()
    if reason:
        print(f"\n[labfleet tests] lab tests skipped: {reason}")
        pytest.skip(reason)
    from labfleet.lab.paths import LabPaths

    return LabPaths.from_env(os.environ.get("LABFLEET_LAB_DIR") or TEST_LAB_DIR)


def prepare_images(say: Callable[[str], None]) -> None:
    """Build (or find in the cache) every architecture's kernel and boot images.

    Called once before the first test when lab tests are selected (``tests/conftest.py``):
    on a fresh machine the three kernels take minutes, which would otherwise count
    against the time-out of whichever lab test happened to run first.
    """
    if _missing():
        return  # the lab tests skip and say why
    import time

    from labfleet.lab.images import build_all
    from labfleet.lab.paths import LabPaths

    started = time.monotonic()
    build_all(LabPaths.from_env(os.environ.get("LABFLEET_LAB_DIR") or TEST_LAB_DIR),
              say=lambda m: say(f"[lab images] {m}"))
    say(f"[labfleet tests] lab images ready in {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="session")
def lab_images(lab_paths):  # type: ignore[no-untyped-def]
    """Every architecture's kernel and boot images (built before the tests; a cache hit)."""
    from labfleet.lab.images import build_all

    return build_all(lab_paths, say=lambda m: None)


@pytest.fixture(scope="session")
def lab(lab_paths) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The lab's status (2 build servers, 2 QEMU hosts, 3 boards), up for the session.

    Taken down when the session ends (``test_zz_down_leaves_nothing`` does it first and
    checks what is left; this is for a session that runs only some of the lab tests): a
    lab left up would be taken over by the next session, perhaps from another checkout,
    with its daemons running that checkout's code.
    """
    import time

    from labfleet.lab import lab as labmod

    started = time.monotonic()
    labmod.up(labmod.LabSpec(build_servers=2, qemu_hosts=2, boards=3), lab_paths,
              say=lambda m: print(f"[lab] {m}"))
    print(f"\n[labfleet tests] lab up in {time.monotonic() - started:.1f} s at {lab_paths.lab_dir}")
    yield labmod.status(lab_paths)
    labmod.down(lab_paths, say=lambda m: print(f"[lab] {m}"))
