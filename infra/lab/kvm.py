"""Does KVM run guests here?  Decided by booting one, not by looking at /dev/kvm.

On these machines /dev/kvm can exist while guests hang, so the lab boots the x86_64 lab
kernel with ``-accel kvm`` and a short timeout and uses KVM only if it reaches the boot
marker.  The answer is remembered per machine boot (``/proc/sys/kernel/random/boot_id``).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from labfleet.lab.images import BOOT_MARKER, BootImages
from labfleet.lab.paths import LabPaths


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def boot_reaches_marker(images: BootImages, accel: str, timeout: float = 8.0) -> bool:
    argv = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", "128", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(images.kernel), "-initrd", str(images.initrd),
            "-append", "console=ttyS0 panic=-1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read(4096)
            if chunk:
                seen += chunk
                if BOOT_MARKER.encode() in seen:
                    return True
            else:
                time.sleep(0.05)
        return False
    finally:
        proc.kill()
        proc.wait()


def kvm_works(images: BootImages, paths: LabPaths) -> bool:
    if not os.path.exists("/dev/kvm"):
        return False
    memo = paths.cache_dir / "kvm.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("boot_id") == boot_id():
            return bool(known["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    works = boot_reaches_marker(images, "kvm")
    memo.write_text(json.dumps({"boot_id": boot_id(), "kvm": works}))
    return works
