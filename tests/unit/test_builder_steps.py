"""A detached step's output is followed to the step's end and no further: the builder's
launch, follow, status and kill scripts run here with sh, tail and setsid, as on a build
server."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from labfleet.builder.domain import remote_plan as plan


def workspace(tmp_path: Path) -> plan.Workspace:
    ws = plan.Workspace(str(tmp_path), uuid.uuid4())
    subprocess.run(plan.prepare(ws), check=True)
    return ws


def launch(ws: plan.Workspace, step: str, argv: list[str]) -> int:
    out = subprocess.run(plan.launch(ws, step, argv), capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[-1])


def follow(ws: plan.Workspace, step: str, pid: int, offset: int = 0,
           timeout: float = 20) -> tuple[str, float]:
    started = time.monotonic()
    out = subprocess.run(plan.follow(ws, step, offset, pid), capture_output=True, text=True,
                         timeout=timeout).stdout
    return out, time.monotonic() - started


def status(ws: plan.Workspace, step: str, pid: int) -> str:
    return subprocess.run(plan.step_status(ws, step, pid), capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_follow_streams_the_whole_output_and_ends_with_the_step(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    pid = launch(ws, "compile", ["sh", "-c", "echo one; sleep 0.5; echo two; exit 3"])
    out, took = follow(ws, "compile", pid)
    assert out == "one\ntwo\n"
    assert took < 1.5, took
    assert status(ws, "compile", pid) == "3"
    # the next step's follow starts where this one stopped
    pid = launch(ws, "collect", ["echo", "three"])
    out, _ = follow(ws, "collect", pid, offset=len("one\ntwo\n"))
    assert out == "three\n" and status(ws, "collect", pid) == "0"


def test_the_follow_ends_on_the_exit_status_while_the_leader_lingers(tmp_path: Path) -> None:
    """A leader not yet reaped (a zombie until init gets to it) still answers kill -0;
    the written exit status is what ends the follow."""
    ws = workspace(tmp_path)
    # its own session before Popen returns (a ``setsid`` command would make the group
    # only once it ran, and a follow started before that finds no group at all)
    lingering = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        Path(ws.log).write_text("compiled\n")
        marker = Path(ws.build_dir) / "exit-compile"
        writer = subprocess.Popen(["sh", "-c", 'sleep 0.3; echo done >> "$1"; echo 0 > "$2"',
                                   "w", ws.log, str(marker)])
        out, took = follow(ws, "compile", lingering.pid)
        writer.wait()
        assert out == "compiled\ndone\n"
        assert took < 1.5, took
    finally:
        lingering.kill()
        lingering.wait()


def test_the_pid_is_answered_once_the_steps_group_exists(tmp_path: Path) -> None:
    """A slow-starting setsid (a loaded server) must not make the step look killed."""
    ws = workspace(tmp_path)
    slow = tmp_path / "slowbin"
    slow.mkdir()
    real = subprocess.run(["sh", "-c", "command -v setsid"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (slow / "setsid").write_text(f'#!/bin/sh\nsleep 0.5\nexec {real} "$@"\n')
    (slow / "setsid").chmod(0o755)
    env = {**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"}
    out = subprocess.run(plan.launch(ws, "compile", ["sleep", "2"]), capture_output=True,
                         text=True, check=True, env=env).stdout
    pid = int(out.split()[-1])
    try:
        assert status(ws, "compile", pid) == "running"
        followed, _ = follow(ws, "compile", pid)
        assert followed == "" and status(ws, "compile", pid) == "0"
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_follow_ends_when_a_killed_steps_group_is_gone(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    pid = launch(ws, "compile", ["sh", "-c", "echo started; exec sleep 60"])
    time.sleep(0.3)
    killed = subprocess.run(plan.kill_group(ws.build_dir, 2), capture_output=True, text=True)
    assert "killed" in killed.stdout
    out, _ = follow(ws, "compile", pid)
    assert out == "started\n"
    assert status(ws, "compile", pid) == "gone"
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def counting_sleep(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ``sleep`` notes each start in a file, then sleeps."""
    bin_dir = tmp_path / "countbin"
    bin_dir.mkdir()
    calls = tmp_path / "sleeps"
    calls.write_text("")
    real = subprocess.run(["sh", "-c", "command -v sleep"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    (bin_dir / "sleep").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def test_the_follow_waits_on_the_steps_lock_without_polling(tmp_path: Path) -> None:
    has_flock = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True).returncode
    assert has_flock == 0, "flock (util-linux) is part of the test machine's base system"
    ws = workspace(tmp_path)
    pid = launch(ws, "compile", ["sh", "-c", "echo one; sleep 1.5; echo two"])
    env, calls = counting_sleep(tmp_path)
    started = time.monotonic()
    out = subprocess.run(plan.follow(ws, "compile", 0, pid), capture_output=True, text=True,
                         timeout=20, env=env).stdout
    took = time.monotonic() - started
    assert out == "one\ntwo\n" and status(ws, "compile", pid) == "0"
    assert took < 2.5, took
    # the old watcher started a sleep every 0.1 s: about 15 here
    assert calls.read_text() == "", calls.read_text()


def test_a_background_process_left_by_the_step_does_not_hold_its_follow(
        tmp_path: Path) -> None:
    """The command does not inherit the step's lock: what it leaves running (a daemon, a
    forgotten ``&``) neither keeps the follow waiting nor makes the step look unfinished."""
    ws = workspace(tmp_path)
    pid = launch(ws, "compile", ["sh", "-c", "sleep 30 > /dev/null 2>&1 & echo built"])
    try:
        out, took = follow(ws, "compile", pid)
        assert out == "built\n" and took < 1.5, took
        assert status(ws, "compile", pid) == "0"
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
