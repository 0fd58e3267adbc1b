"""Run each service as its own OS process and keep it running.

Each child runs ``python -m labfleet.cli.main run <name>`` in its own process group, so a
Ctrl-C in the terminal reaches only the supervisor, which then stops the services in
order (SIGTERM, then SIGKILL after a grace period) before the servers they depend on.
Children also get ``PR_SET_PDEATHSIG``: if the supervisor itself is killed, they do not
run on unsupervised.

Every line a child prints is echoed with its name in front; a crash is reported with its
exit status and last lines, counted, and followed by a restart after a back-off.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .backoff import RestartBackoff
from .datadir import RunFiles

TAIL_LINES = 12
SUPERVISOR = "labfleet"


class Output:
    """Prefixed, line-at-a-time console output shared by the supervisor and its children."""

    def __init__(self, stream: TextIO | None = None, width: int = 9) -> None:
        self.stream = stream or sys.stdout
        self.width = width

    def line(self, source: str, text: str) -> None:
        self.stream.write(f"{source:<{self.width}} | {text}\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(SUPERVISOR, part)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]


def service_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "labfleet.cli.main", "run", name]


@dataclass
class Child:
    spec: ChildSpec
    backoff: RestartBackoff
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    crashes: int = 0
    started_at: float = 0.0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the supervisor dies, however it dies."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: no parent-death signal, the pid files remain
        return lambda: None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class Supervisor:
    def __init__(self, specs: list[ChildSpec], run_files: RunFiles, out: Output, *,
                 grace_s: float = 15.0,
                 backoff: Callable[[], RestartBackoff] = RestartBackoff) -> None:
        self.children = [Child(spec, backoff()) for spec in specs]
        self.run_files = run_files
        self.out = out
        self.grace_s = grace_s
        self._stopping = asyncio.Event()

    # ---- running ------------------------------------------------------------------

    async def start(self) -> None:
        for child in self.children:
            child.task = asyncio.create_task(self._keep_running(child), name=child.name)

    async def _keep_running(self, child: Child) -> None:
        while not self._stopping.is_set():
            returncode = await self._run_once(child)
            if self._stopping.is_set():
                break
            child.crashes += 1
            uptime = time.monotonic() - child.started_at
            delay = child.backoff.delay_after(uptime)
            self._report_crash(child, returncode, uptime, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self.run_files.remove_pid(child.name)

    async def _run_once(self, child: Child) -> int | None:
        """Start the child and wait for it to exit; None if it could not be started."""
        child.tail.clear()
        child.started_at = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                env=child.spec.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            child.tail.append(f"could not start {child.spec.argv[0]}: {exc}")
            return None
        child.process = proc
        child.starts += 1
        try:
            self.run_files.write_pid(child.name, proc.pid)
        except OSError as exc:  # supervision goes on; only the pid file is missing
            self.out.say(f"cannot write the pid file of {child.name}: {exc}")
        again = f", restart {child.starts - 1}" if child.starts > 1 else ""
        self.out.say(f"started {child.name} (pid {proc.pid}{again})")
        pump = asyncio.create_task(self._pump(child, proc))
        returncode = await proc.wait()
        # a grandchild may still hold the pipe open; the service itself is gone
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), 2.0)
        pump.cancel()
        return returncode

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        pending = b""
        while chunk := await proc.stdout.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._echo(child, raw)
        if pending:
            self._echo(child, pending)

    def _echo(self, child: Child, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        child.tail.append(text)
        self.out.line(child.name, text)

    def _report_crash(self, child: Child, returncode: int | None, uptime: float,
                      delay: float) -> None:
        how = "could not be started" if returncode is None else describe_exit(returncode)
        self.out.say(f"{child.name} crashed: {how} after {uptime:.1f} s "
                     f"(crash {child.crashes}); restarting in {delay:g} s")
        if child.tail:
            self.out.say(f"last lines of {child.name}:")
            for text in child.tail:
                self.out.say(f"    {text}")
        self.out.say(self.status_line())

    def status_line(self) -> str:
        running = sum(child.running for child in self.children)
        crashed = [f"{c.name} {c.crashes}" for c in self.children if c.crashes]
        crashes = f"crashes: {', '.join(crashed)}" if crashed else "no crashes"
        return f"status: {running}/{len(self.children)} services running, {crashes}"

    # ---- stopping -----------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM every service, SIGKILL what is left after the grace period."""
        self._stopping.set()
        running = [c for c in self.children if c.running]
        if running:
            self.out.say(f"stopping {', '.join(c.name for c in running)} "
                         f"(SIGTERM, SIGKILL after {self.grace_s:g} s)")
        for child in running:
            self._signal(child, signal.SIGTERM)
        tasks = [c.task for c in self.children if c.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.grace_s)
        if late:
            self.kill_now()
            await asyncio.wait(late)
        for child in self.children:
            if child.process is not None and child.process.returncode not in (None, 0, -15):
                self.out.say(f"{child.name} stopped: {describe_exit(child.process.returncode)}")

    def kill_now(self) -> None:
        self._stopping.set()
        for child in self.children:
            if child.running:
                self.out.say(f"killing {child.name} (pid {child.process.pid})")  # type: ignore[union-attr]
                self._signal(child, signal.SIGKILL)

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        assert child.process is not None
        # the whole group: a service's own helper processes go with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, sig)
