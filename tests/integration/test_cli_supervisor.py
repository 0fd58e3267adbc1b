"""The supervisor with real child processes: restart after a crash, orderly stop, and no
child outliving a killed supervisor."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labfleet.cli.backoff import RestartBackoff
from labfleet.cli.datadir import RunFiles
from labfleet.cli.supervisor import ChildSpec, Output, Supervisor

FIXTURES = Path(__file__).parent / "fixtures"
CHILD = str(FIXTURES / "cli_child.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes; /proc tells
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def spec(name: str, mode: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, CHILD, mode], {"PATH": os.environ["PATH"]})


async def until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def make_supervisor(tmp_path: Path, specs: list[ChildSpec], **kwargs: object
                    ) -> tuple[Supervisor, io.StringIO, RunFiles]:
    text = io.StringIO()
    run = RunFiles(tmp_path)
    supervisor = Supervisor(specs, run, Output(text),
                            backoff=lambda: RestartBackoff(initial_s=0.2, max_s=1.0),
                            **kwargs)  # type: ignore[arg-type]
    return supervisor, text, run


async def test_a_killed_service_is_restarted_and_the_crash_reported(tmp_path: Path) -> None:
    supervisor, text, run = make_supervisor(tmp_path, [spec("alpha", "polite"),
                                                       spec("beta", "polite")])
    await supervisor.start()
    try:
        await until(lambda: "child polite pid" in text.getvalue(), 10, "children to print")
        await until(lambda: run.read_pid("alpha") and run.read_pid("beta"), 10, "pid files")
        first = run.read_pid("alpha")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: "started alpha" in text.getvalue()
                    and "restart 1" in text.getvalue(), 10, "alpha to be restarted")
        out = text.getvalue()
        assert "alpha crashed: killed by SIGKILL" in out
        assert "crashes: alpha 1" in out
        # the last lines of the dead process are part of the report
        assert f"    child polite pid {first}" in out
        second = run.read_pid("alpha")
        assert second is not None and second != first and alive(second)
        # beta was not touched
        assert supervisor.children[1].starts == 1 and supervisor.children[1].crashes == 0
        assert "beta      | child polite pid" in out
    finally:
        await supervisor.stop()
    assert not alive(second)


async def test_a_crash_loop_backs_off_and_shows_exit_code_and_last_lines(tmp_path: Path) -> None:
    supervisor, text, _ = make_supervisor(tmp_path, [spec("gamma", "crash")])
    await supervisor.start()
    try:
        await until(lambda: supervisor.children[0].crashes >= 3, 10, "three crashes")
    finally:
        await supervisor.stop()
    out = text.getvalue()
    assert "gamma crashed: exit code 3" in out
    assert "    crash line 2" in out
    # back-off doubles from 0.2 s
    assert "restarting in 0.2 s" in out and "restarting in 0.4 s" in out


async def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    supervisor, text, run = make_supervisor(
        tmp_path, [spec("polite", "polite"), spec("stubborn", "stubborn")], grace_s=1.0)
    await supervisor.start()
    await until(lambda: text.getvalue().count("child ") >= 2, 10, "both children up")
    pids = [run.read_pid("polite"), run.read_pid("stubborn")]
    started = time.monotonic()
    await supervisor.stop()
    took = time.monotonic() - started
    out = text.getvalue()
    assert "child stopping" in out  # the polite one handled SIGTERM itself
    assert "killing stubborn" in out
    assert 0.9 <= took < 5, took
    for pid in pids:
        assert pid is not None and not alive(pid)
    assert run.read_pid("polite") is None and run.read_pid("stubborn") is None
    assert "crashed" not in out  # stopping is not a crash


def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "cli_supervise.py"), str(tmp_path), "polite",
             "polite"], stdout=sink, stderr=subprocess.STDOUT)
    run = RunFiles(tmp_path)
    try:
        # wait until both children are idle: one still printing its first line would die
        # of a broken pipe instead, proving nothing
        deadline = time.monotonic() + 15
        while log.read_text().count("child polite pid") < 2:
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.05)
        children = [run.read_pid("c0"), run.read_pid("c1")]
        assert all(pid and alive(pid) for pid in children)
    finally:
        proc.kill()
        proc.wait()
    # the parent-death signal (SIGTERM) stops them although nobody told them to
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.05)
    left = [pid for pid in children if alive(pid)]  # type: ignore[arg-type]
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    assert not left, f"children {left} outlived their supervisor"
