"""A build server over the pooled SSH connection: steps, live output, kills, files.

Connection-level failures become a retryable :class:`BuildError` (``server_lost``):
another server may well build what this one could not reach.
"""
from __future__ import annotations

import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncssh

from labfleet.shared.ssh import RemoteCommandFailed, SshError, SshPool

from ..domain import remote_plan as plan
from ..domain.errors import BuildError
from .inventory import ServerAccess

READ_SIZE = 64 * 1024


def server_lost(access: ServerAccess, exc: BaseException) -> BuildError:
    if isinstance(exc, SshError) and not isinstance(exc, RemoteCommandFailed):
        return BuildError(exc.code, f"build server {access.view.name}: {exc.message}",
                          hint=exc.hint, retryable=True)
    return BuildError("server_lost", f"lost the SSH connection to build server "
                      f"{access.view.name} ({type(exc).__name__}: {exc})",
                      hint="the build goes to another server; check this one's network",
                      retryable=True)


_LOSS = (SshError, asyncssh.Error, OSError, EOFError)


class BuildHost:
    def __init__(self, pool: SshPool, access: ServerAccess, *, command_timeout: float) -> None:
        self.pool = pool
        self.access = access
        self.command_timeout = command_timeout

    @property
    def name(self) -> str:
        return self.access.view.name

    async def run(self, argv: list[str], *, check: bool = True,
                  timeout: float | None = None) -> asyncssh.SSHCompletedProcess:
        a = self.access
        try:
            return await self.pool.run(a.host, a.port, a.creds, a.host_key, argv, check=check,
                                       timeout=timeout or self.command_timeout)
        except RemoteCommandFailed:
            raise
        except _LOSS as exc:
            raise server_lost(a, exc) from None

    async def output(self, argv: list[str]) -> str:
        return str((await self.run(argv)).stdout or "").strip()

    async def work_root(self) -> str:
        caps = self.access.view.capabilities
        base = caps.work_dir if caps and caps.work_dir else await self.output(
            ["sh", "-c", 'printf %s "$HOME"'])
        return plan.work_root(base)

    async def cpu_cores(self) -> int:
        caps = self.access.view.capabilities
        if caps and caps.cpu_cores:
            return caps.cpu_cores
        return int(await self.output(["nproc"]) or 1)

    # ---- detached steps -----------------------------------------------------------

    async def launch(self, ws: plan.Workspace, step: str, argv: list[str]) -> int:
        out = await self.output(plan.launch(ws, step, argv))
        try:
            return int(out.splitlines()[-1])
        except (ValueError, IndexError):
            raise BuildError("launch_failed", f"starting the {step} step on {self.name} "
                             f"printed no process id: {out[-200:]!r}") from None

    async def follow(self, ws: plan.Workspace, step: str, offset: int, pid: int,
                     sink: Callable[[bytes], Awaitable[None]]) -> int:
        """Stream the build log from ``offset`` until the step ends; returns the new offset."""
        a = self.access
        try:
            conn = await self.pool.connection(a.host, a.port, a.creds, a.host_key)
            process = await conn.create_process(shlex.join(plan.follow(ws, step, offset, pid)),
                                                encoding=None)
            try:
                while True:
                    chunk = await process.stdout.read(READ_SIZE)
                    if not chunk:
                        break
                    offset += len(chunk)
                    await sink(chunk)
                await process.wait()
            finally:
                process.close()
        except _LOSS as exc:
            self.pool.drop(a.host, a.port, a.creds.username)
            raise server_lost(a, exc) from None
        return offset

    async def step_status(self, ws: plan.Workspace, step: str, pid: int) -> int | str:
        """The step's exit status, or ``"running"`` / ``"gone"`` (killed, no status)."""
        out = await self.output(plan.step_status(ws, step, pid))
        return int(out) if out.lstrip("-").isdigit() else out

    async def kill(self, build_dir: str) -> bool:
        """Kill the process group recorded in ``build_dir``'s pid file; True if one died."""
        return "killed" in await self.output(plan.kill_group(build_dir))

    # ---- files --------------------------------------------------------------------

    @asynccontextmanager
    async def sftp(self) -> AsyncIterator[Any]:
        a = self.access
        try:
            conn = await self.pool.connection(a.host, a.port, a.creds, a.host_key)
            client = await conn.start_sftp_client()
        except _LOSS as exc:
            raise server_lost(a, exc) from None
        try:
            yield client
        finally:
            client.exit()

    def prepare_transfer(self) -> None:
        """Have the OpenSSH master for large files log in meanwhile (see
        :mod:`labfleet.shared.ssh.openssh`); the upload waits for it only if it must."""
        a = self.access
        self.pool.warm_bulk(a.host, a.port, a.creds, a.host_key)

    @asynccontextmanager
    async def open_file(self, path: str) -> AsyncIterator[Any]:
        """A file on the server to stream (``await f.read(n)``): through OpenSSH where the
        server takes key logins, else over SFTP on the pooled connection."""
        a = self.access
        master = await self.pool.bulk(a.host, a.port, a.creds, a.host_key)
        if master is not None and master.alive:
            async with master.read_file(path) as reader:
                yield reader
            return
        async with self.sftp() as sftp, sftp.open(path, "rb") as remote_file:
            yield remote_file

    async def sha256sums(self, paths: list[str]) -> dict[str, str]:
        return plan.parse_sha256sums(await self.output(plan.sha256sums(paths)))
