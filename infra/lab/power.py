"""The board power switch, run on the flash station by pdudaemon, uhubctl and gpioset.

``python -m labfleet.lab.power BOARD_DIR on|off|cycle|state``

*On* hands the SD card to the board (its ``/srv/sd/<board>`` link disappears), reads the
boot files off the card, starts the board's QEMU held in reset, points the board's
console link at its UART and releases reset ``BOOT_HOLD_S`` later.  *Off* stops QEMU and
hands the card back to the station.  Both take the board's lock, which flashing takes
too, so a card is never written while its board runs.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from labfleet.lab import procs
from labfleet.lab.boards import BOOT_HOLD_S, pty_of, qemu_argv, qmp, read_card


class PowerError(RuntimeError):
    pass


def _config(board_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((board_dir / "board.json").read_text())


def _lock(board_dir: Path):  # type: ignore[no-untyped-def]
    handle = (board_dir / "power.lock").open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def qemu_pid(board_dir: Path) -> int | None:
    pid = procs.read_pidfile(board_dir / "qemu.pid")
    return pid if procs.alive(pid) else None


def is_on(board_dir: Path) -> bool:
    return (board_dir / "switch").exists() and (board_dir / "switch").read_text().strip() == "on"


def _set_switch(board_dir: Path, value: str) -> None:
    # Replace rather than rewrite: root (pdudaemon) and the lab user both flip it.
    tmp = board_dir / f"switch.{os.getpid()}"
    tmp.write_text(value + "\n")
    tmp.replace(board_dir / "switch")


def _drop_privileges(uid: int) -> None:
    # QEMU runs as the station's lab user whoever flips the switch (pdudaemon runs as
    # root), so either may switch it off again through its monitor socket.
    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def power_on(board_dir: Path) -> None:
    cfg = _config(board_dir)
    with _lock(board_dir):
        _set_switch(board_dir, "on")
        if qemu_pid(board_dir):
            return
        Path(cfg["sd_link"]).unlink(missing_ok=True)
        boot = read_card(board_dir / "sdcard.img", board_dir / "boot")
        for stale in ("qmp.sock", "sensor.sock", "console", "qemu.pid"):
            (board_dir / stale).unlink(missing_ok=True)
        argv = qemu_argv(cfg["arch"], board_dir, boot, int(cfg.get("temperature_mc", 45000)))
        log = (board_dir / "qemu.log").open("ab")
        pid = os.fork()
        if pid == 0:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            _drop_privileges(int(cfg.get("uid", 0)))
            os.execvp(argv[0], argv)
        # qemu -daemonize: the first process exits once the machine is set up.
        _, status = os.waitpid(pid, 0)
        log.close()
        if status != 0:
            _set_switch(board_dir, "off")
            raise PowerError(f"{board_dir.name}: QEMU did not start (see {board_dir}/qemu.log)")
        pty = pty_of(board_dir)
        if pty:
            os.symlink(pty, board_dir / "console")
        if "Image" in boot:
            subprocess.Popen([sys.executable, "-m", "labfleet.lab.power", str(board_dir),
                              "release"], start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def release(board_dir: Path) -> None:
    """Let the board out of reset after the hold time (run detached by power_on)."""
    time.sleep(BOOT_HOLD_S)
    if qemu_pid(board_dir):
        qmp(board_dir / "qmp.sock", "cont")


def power_off(board_dir: Path) -> None:
    cfg = _config(board_dir)
    with _lock(board_dir):
        _set_switch(board_dir, "off")
        pid = qemu_pid(board_dir)
        if pid:
            try:
                qmp(board_dir / "qmp.sock", "quit", timeout=3)
            except (OSError, RuntimeError, ValueError):
                pass
            if not procs.wait_for(lambda: not procs.alive(pid), 5):
                procs.stop(pid)
        (board_dir / "console").unlink(missing_ok=True)
        link = Path(cfg["sd_link"])
        if link.exists() and not link.is_symlink():
            link.unlink()  # a stray file written while the card was not there
        if not link.is_symlink():
            link.symlink_to(board_dir / "sdcard.img")


def state(board_dir: Path) -> str:
    return "on" if is_on(board_dir) else "off"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("on", "off", "cycle", "state", "release"):
        print("usage: python -m labfleet.lab.power BOARD_DIR on|off|cycle|state", file=sys.stderr)
        return 2
    board_dir, action = Path(argv[0]), argv[1]
    if not (board_dir / "board.json").exists():
        print(f"{board_dir} is not a lab board directory", file=sys.stderr)
        return 2
    try:
        if action == "on":
            power_on(board_dir)
        elif action == "off":
            power_off(board_dir)
        elif action == "cycle":
            power_off(board_dir)
            time.sleep(0.5)
            power_on(board_dir)
        elif action == "release":
            release(board_dir)
        else:
            print(state(board_dir))
    except PowerError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
