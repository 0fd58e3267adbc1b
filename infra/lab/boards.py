"""Emulated boards: SD card format, QEMU command line, QMP.

**SD card format.**  A board's card is a raw disk image holding an ext2 filesystem with

- ``/Image``  - the kernel (``bzImage`` for x86_64; the name is the same on every board),
- ``/initrd`` - the initramfs (optional),
- ``/cmdline`` - extra kernel command-line arguments, one line (optional).

Powering on reads those files from the card (as a board's boot ROM would) and boots
them; a card without ``/Image`` leaves the board on but silent.  Make one with
``make_card(kernel, initrd, out)`` or by hand: ``mke2fs -t ext2 -d DIR card.img 64M``.
The flash station sees the card as ``/srv/sd/<board>`` only while the board is off.

**Console.**  The board's UART is a pty that exists while the board is powered (like an
on-board USB-UART); ser2net on the flash station serves it.  After power-on the board is
held in reset for ``BOOT_HOLD_S`` seconds, so a client can attach before the first byte.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from labfleet.lab.images import ARCHES

BOOT_HOLD_S = 2.0
# by full path: a station user's PATH has no /sbin
DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"
MKE2FS = shutil.which("mke2fs") or "/sbin/mke2fs"
CARD_FILES = ("Image", "initrd", "cmdline")


class CardError(RuntimeError):
    pass


def make_card(kernel: Path, initrd: Path | None, out: Path, cmdline: str = "",
              size_mb: int = 64) -> Path:
    """Write an SD-card image in the lab's format (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "Image").write_bytes(kernel.read_bytes())
        if initrd:
            (root / "initrd").write_bytes(initrd.read_bytes())
        if cmdline:
            (root / "cmdline").write_text(cmdline.strip() + "\n")
        out.unlink(missing_ok=True)
        subprocess.run([MKE2FS, "-q", "-F", "-t", "ext2", "-d", str(root), str(out),
                        f"{size_mb}M"], check=True, capture_output=True)
    return out


def read_card(card: Path, into: Path) -> dict[str, Path]:
    """Copy the boot files off the card; returns those present (empty for a blank card)."""
    into.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name in CARD_FILES:
        target = into / name
        target.unlink(missing_ok=True)
        subprocess.run([DEBUGFS, "-R", f"dump /{name} {target}", str(card)],
                       capture_output=True)
        if target.exists() and target.stat().st_size > 0:
            found[name] = target
    return found


def qemu_argv(arch: str, board_dir: Path, boot: dict[str, Path], temperature_mc: int) -> list[str]:
    spec = ARCHES[arch]
    argv = [spec.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-m", "128",
            "-S", "-daemonize", "-pidfile", str(board_dir / "qemu.pid"),
            "-name", board_dir.name,
            "-qmp", f"unix:{board_dir / 'qmp.sock'},server=on,wait=off",
            "-chardev", "pty,id=uart", "-serial", "chardev:uart",
            "-chardev", f"socket,id=sensor,path={board_dir / 'sensor.sock'},server=on,wait=off"]
    if arch == "x86_64":
        argv += ["-M", "pc", "-device", "virtio-serial-pci"]
    elif arch == "arm64":
        argv += ["-M", "virt", "-cpu", "cortex-a53", "-device", "virtio-serial-device"]
    else:
        argv += ["-M", "virt", "-bios", "default", "-device", "virtio-serial-device"]
    argv += ["-device", "virtconsole,chardev=sensor"]
    if "Image" in boot:
        extra = boot["cmdline"].read_text().strip() if "cmdline" in boot else ""
        argv += ["-kernel", str(boot["Image"]),
                 "-append", f"console={spec.console} labfleet.temp={temperature_mc} {extra}".strip()]
        if "initrd" in boot:
            argv += ["-initrd", str(boot["initrd"])]
    return argv


def qmp(sock: Path, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = 5.0) -> Any:
    """One QMP command on the board's monitor socket; returns its "return" value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        reader = s.makefile("rb")
        json.loads(reader.readline())  # greeting
        for cmd in ({"execute": "qmp_capabilities"},
                    {"execute": command, **({"arguments": arguments} if arguments else {})}):
            s.sendall(json.dumps(cmd).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline() or b"{}")
                if "event" in reply:
                    continue
                if "error" in reply:
                    raise RuntimeError(f"QMP {cmd['execute']}: {reply['error'].get('desc')}")
                break
        return reply.get("return")


def send_temperature(board_dir: Path, temperature_mc: int) -> bool:
    """Feed the board's sensor channel; False if the board is not running."""
    sock = board_dir / "sensor.sock"
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(f"{temperature_mc}\n".encode())
        return True
    except OSError:
        return False


def pty_of(board_dir: Path) -> str | None:
    for chardev in qmp(board_dir / "qmp.sock", "query-chardev") or []:
        if chardev.get("label") == "uart" and chardev.get("filename", "").startswith("pty:"):
            return str(chardev["filename"][4:])
    return None


def chown_tree(path: Path, uid: int) -> None:
    for p in [path, *path.rglob("*")]:
        try:
            os.lchown(p, uid, uid)
        except OSError:
            pass
