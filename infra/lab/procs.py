"""Starting and stopping the lab's daemons, which must outlive the command that started them.

A daemon is started through a throw-away ``sh`` that backgrounds it and prints its pid,
so the daemon is re-parented away from us (no zombies for a long-lived caller such as the
test process) and runs in its own session (Ctrl-C in the terminal leaves it alone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class DaemonError(RuntimeError):
    def __init__(self, message: str, log: Path | None = None) -> None:
        tail = ""
        if log and log.exists():
            tail = "\n" + log.read_text(errors="replace")[-1500:]
        super().__init__(message + (f" (log {log}){tail}" if log else ""))


def in_host(holder_pid: int, argv: list[str]) -> list[str]:
    """argv run inside a host: its network, mount and UTS namespaces."""
    return ["nsenter", "-t", str(holder_pid), "-n", "-m", "-u", "--", *argv]


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start argv detached, output appended to log; return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    script = 'exec 3>&1 </dev/null >>"$LAB_LOG" 2>&1; "$@" 3>&- & echo $! >&3'
    out = subprocess.run(["sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                         env={**os.environ, **(env or {}), "LAB_LOG": str(log)},
                         start_new_session=True, check=True)
    return int(out.stdout.strip())


def alive(pid: int | None) -> bool:
    """True if pid runs (a zombie does not count)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def stop(pid: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after timeout.  A stopped (SIGSTOP) process is continued first."""
    if not alive(pid):
        return
    assert pid is not None
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    if wait_for(lambda: not alive(pid), timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for(lambda: not alive(pid), 5)
