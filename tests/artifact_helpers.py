"""What the artifact store tests share: a build host on the test sshd, an attempt's upload
on it, files placed on it, and a remote file that breaks mid-read."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from labfleet.builder.adapters.inventory import ServerAccess
from labfleet.builder.adapters.log_stream import BuildLog
from labfleet.builder.adapters.remote import BuildHost
from labfleet.builder.attempt import BuildAttempt
from labfleet.builder.domain import remote_plan as plan
from labfleet.shared.bus import ensure_streams
from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.resource import Arch, ResourceKind, ResourceView, SshTarget
from labfleet.shared.ssh import Credentials, SshPool


@asynccontextmanager
async def build_host(sshd: Any, name: str) -> AsyncIterator[BuildHost]:
    """The builder's view of the test sshd as a build server, over its own pool."""
    pool = SshPool(connect_timeout=5)
    view = ResourceView(
        resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=name,
        ssh=SshTarget(address=sshd.host, port=sshd.port, username=sshd.username,
                      host_key=sshd.host_key),
        architectures=[Arch.X86_64])
    try:
        yield BuildHost(pool, ServerAccess(view=view, creds=Credentials(
            sshd.username, private_key=sshd.private_key)), command_timeout=30)
    finally:
        await pool.close()


async def make_attempt(nc: Any, sshd: Any, host: BuildHost, store: Any,
                       server_name: str = "") -> BuildAttempt:
    """A build attempt on ``host`` whose upload stores into ``store`` (its steps unused)."""
    js = nc.jetstream()
    await ensure_streams(js)
    build_id = uuid.uuid4()

    async def nothing(*_args: Any) -> None:
        return None

    return BuildAttempt(
        build_id=build_id, number=1,
        spec=BuildSpec(repo_url="file:///x", arch=Arch.X86_64, artifacts=["Image"]),
        host=host, ws=plan.Workspace(root=str(sshd.workdir), build_id=build_id),
        log=await BuildLog(js, build_id, 1).open(), store=store, toolchain_prefix="", jobs=1,
        on_phase=nothing, guard=nothing, server_name=server_name)


def server_file(sshd: Any, name: str, data: bytes, folder: str = "files") -> Path:
    """``data`` as a file on the "server" (the sshd's own directory)."""
    path = sshd.workdir / folder / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


class Breaks:
    """An SFTP file that fails after a few reads, as a lost connection does."""

    def __init__(self, remote: Any, reads: int) -> None:
        self.remote = remote
        self.reads = reads

    async def read(self, n: int) -> bytes:
        self.reads -= 1
        if self.reads < 0:
            raise ConnectionResetError("connection lost mid-read")
        return await self.remote.read(n)
