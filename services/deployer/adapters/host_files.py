"""Files on a QEMU host: the content-addressed artifact cache and per-environment files.

``<image_dir>/cache/<sha256>`` holds each artifact once, whatever build it came from; an
artifact already there (its checksum verified on the host) is not sent again.  A new one is
written over SFTP on the pooled SSH connection to a temporary name, checked with
``sha256sum`` on the host and only then renamed into place, so the cache never holds a
partial or corrupt file under a checksum's name.  ``<image_dir>/envs/<env_id>/`` holds
what belongs to one environment (its writable disk) and is removed with it.
"""
from __future__ import annotations

import posixpath
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from labfleet.shared.ssh import SshPool

from .libvirt_host import HostAccess


class TransferFailed(Exception):
    pass


@dataclass
class TransferReport:
    bytes_sent: int = 0
    sent: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


class HostFiles:
    def __init__(self, pool: SshPool, access: HostAccess, image_dir: str) -> None:
        self.pool = pool
        self.access = access
        self.image_dir = image_dir.rstrip("/") or "/"

    @property
    def cache_dir(self) -> str:
        return posixpath.join(self.image_dir, "cache")

    def cached_path(self, sha256: str) -> str:
        return posixpath.join(self.cache_dir, sha256)

    def env_dir(self, env_id: uuid.UUID) -> str:
        return posixpath.join(self.image_dir, "envs", str(env_id))

    async def run(self, argv: list[str], check: bool = True, timeout: float | None = None) -> str:
        v = self.access.view
        result = await self.pool.run(v.ssh.address, v.ssh.port, self.access.creds,
                                     v.ssh.host_key, argv, check=check, timeout=timeout)
        return str(result.stdout or "")

    async def verified(self, digests: list[str]) -> set[str]:
        """Which of these checksums the cache holds intact (``sha256sum`` on the host)."""
        if not digests:
            return set()
        script = ('cd "$1" 2>/dev/null || exit 0; shift; for f; do [ -f "$f" ] && '
                  'sha256sum "$f"; done; exit 0')
        out = await self.run(["sh", "-c", script, "sh", self.cache_dir, *digests], timeout=300)
        good = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == parts[1]:
                good.add(parts[0])
        return good

    async def ensure(self, wanted: dict[str, str],
                     fetch: Callable[[str, Path], Awaitable[None]], scratch: Path,
                     progress: Callable[[], Awaitable[None]]) -> TransferReport:
        """Make sure the cache holds every ``{sha256: artifact name}``; fetch and send what
        is missing.  ``fetch(name, local_path)`` writes the artifact locally."""
        report = TransferReport()
        present = await self.verified(list(wanted))
        report.cached = [wanted[d] for d in wanted if d in present]
        missing = {d: n for d, n in wanted.items() if d not in present}
        if not missing:
            return report
        await self.run(["mkdir", "-p", self.cache_dir])
        scratch.mkdir(parents=True, exist_ok=True)
        v = self.access.view
        conn = await self.pool.connection(v.ssh.address, v.ssh.port, self.access.creds,
                                          v.ssh.host_key)
        for digest, name in missing.items():
            local = scratch / digest
            await fetch(name, local)
            await progress()
            partial = posixpath.join(self.cache_dir, f".{digest}.{uuid.uuid4().hex[:8]}.part")
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), partial)
            report.bytes_sent += local.stat().st_size
            local.unlink(missing_ok=True)
            out = await self.run(["sh", "-c", 'sha256sum "$1" | cut -d" " -f1', "sh", partial])
            if out.strip() != digest:
                await self.run(["rm", "-f", partial], check=False)
                raise TransferFailed(
                    f"{name}: the copy on {v.name} has checksum {out.strip() or 'none'}, "
                    f"expected {digest} (the transfer was damaged; retry)")
            await self.run(["mv", "-f", partial, self.cached_path(digest)])
            report.sent.append(name)
            await progress()
        return report

    async def prepare_env(self, env_id: uuid.UUID, rootfs_sha256: str | None) -> str | None:
        """Create the environment's directory; with a rootfs, a qcow2 overlay over the
        cached image (the cache stays pristine).  Returns the overlay's path."""
        d = self.env_dir(env_id)
        await self.run(["mkdir", "-p", d])
        if rootfs_sha256 is None:
            return None
        disk = posixpath.join(d, "rootfs.qcow2")
        backing = self.cached_path(rootfs_sha256)
        script = ('fmt=$(qemu-img info --output=json "$1" | sed -n \'s/.*"format": "\\([a-z0-9]*\\)".*/\\1/p\' | head -1); '
                  'qemu-img create -q -f qcow2 -F "${fmt:-raw}" -b "$1" "$2"')
        await self.run(["sh", "-c", script, "sh", backing, disk])
        return disk

    async def remove_env(self, env_id: uuid.UUID) -> None:
        await self.run(["rm", "-rf", "--", self.env_dir(env_id)])
