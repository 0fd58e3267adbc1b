"""What every registration probe shares: the host key on first contact, and a short-lived
SSH session that runs a few argument-list commands at a time over one connection.

Registration is rare, so the session's connection is closed when the probe ends.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from labfleet.shared.ssh import Credentials, SshPool, probe_host_key

#: remote commands in flight at once on the probe's connection (sshd's MaxSessions is 10)
PARALLEL_COMMANDS = 4


class ProbeSession:
    def __init__(self, pool: SshPool, address: str, port: int, creds: Credentials,
                 host_key: str) -> None:
        self._pool = pool
        self._target = (address, port, creds, host_key)
        self._limit = asyncio.Semaphore(PARALLEL_COMMANDS)

    async def run(self, argv: Sequence[str], **kwargs: Any) -> Any:
        async with self._limit:
            return await self._pool.run(*self._target, argv, **kwargs)

    async def output(self, argv: Sequence[str]) -> str:
        return str((await self.run(argv)).stdout or "")

    async def version(self, program: str) -> tuple[str, str]:
        """(program, its ``--version`` text); "" when absent (127) or broken (other codes)."""
        result = await self.run([program, "--version"], check=False)
        return program, str(result.stdout or "") if result.exit_status == 0 else ""

    async def close(self) -> None:
        await self._pool.close()


class SshProbe:
    def __init__(self, *, connect_timeout: float, command_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout

    async def host_key(self, address: str, port: int) -> str:
        """The key the host presents now (raises an ``SshError`` subclass when unreachable)."""
        return await probe_host_key(address, port, self.connect_timeout)

    def session(self, address: str, port: int, creds: Credentials, host_key: str
                ) -> ProbeSession:
        pool = SshPool(connect_timeout=self.connect_timeout, command_timeout=self.command_timeout)
        return ProbeSession(pool, address, port, creds, host_key)
