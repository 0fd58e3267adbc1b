"""One poll of one host: the constant script over the host's pooled SSH connection."""
from __future__ import annotations

import asyncio

from labfleet.shared.ssh import ConnectTimeout, Credentials, SshPool

from ..domain.sampling import PollReading, parse_poll_output, poll_argv
from .projection import PollTarget


class HostPoll:
    def __init__(self, *, timeout: float, keepalive_s: float = 15.0,
                 host_key_recheck_s: float | None = 0.0) -> None:
        self.timeout = timeout
        # one persistent connection per host, reopened after a failure; its host key
        # verified again with a fresh handshake on every poll (``0``), so a swapped key
        # is reported at the next poll, within the offline bound (a QEMU host's libvirt
        # connection goes to the same sshd and is dropped with it)
        self.pool = SshPool(connect_timeout=timeout, command_timeout=timeout,
                            keepalive_s=keepalive_s, host_key_recheck_s=host_key_recheck_s)

    async def read(self, target: PollTarget, creds: Credentials) -> PollReading:
        """Raises an ``SshError`` (``.code``) or ``UnreadablePoll``; never hangs past ``timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.pool.run(target.address, target.port, creds, target.host_key,
                                             poll_argv(target.work_dir), timeout=self.timeout)
        except TimeoutError:
            raise ConnectTimeout(target.address, target.port, f"{self.timeout:g}s") from None
        return parse_poll_output(str(result.stdout or ""))

    def drop(self, target: PollTarget) -> None:
        """Forget the host's connection: it may be half-dead; the next poll reconnects."""
        self.pool.drop(target.address, target.port, target.username)

    async def close(self) -> None:
        await self.pool.close()
