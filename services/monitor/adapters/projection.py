"""The monitor's own copy of which hosts exist, built from ``resource.*`` events.

Events may arrive twice or out of order (redelivery); each row remembers the time of the
event that wrote it and ignores older ones, and a removal leaves a tombstone so a late
``resource.registered`` cannot bring a removed host back.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from labfleet.shared.db import Database, Transaction
from labfleet.shared.events.resource import Lifecycle, ResourceKind, ResourceView

#: kinds reached over SSH and polled for CPU / memory / disk (boards are watched otherwise)
POLLED_KINDS = frozenset({ResourceKind.BUILD_SERVER, ResourceKind.QEMU_HOST})


@dataclass(frozen=True)
class PollTarget:
    resource_id: uuid.UUID
    kind: ResourceKind
    name: str
    address: str
    port: int
    username: str
    host_key: str | None
    work_dir: str | None
    lifecycle: Lifecycle = Lifecycle.ACTIVE

    @classmethod
    def from_view(cls, view: ResourceView) -> PollTarget:
        caps = view.capabilities
        work_dir = (caps.work_dir or None) if caps else None
        if view.qemu is not None:  # a QEMU host's storage that counts is its image directory
            work_dir = view.qemu.image_dir or None
        return cls(resource_id=view.resource_id, kind=view.kind, name=view.name,
                   address=view.ssh.address, port=view.ssh.port, username=view.ssh.username,
                   host_key=view.ssh.host_key, work_dir=work_dir,
                   lifecycle=view.lifecycle)

    @property
    def in_maintenance(self) -> bool:
        return self.lifecycle is Lifecycle.MAINTENANCE


def _target(row: asyncpg.Record) -> PollTarget:
    return PollTarget(resource_id=row["id"], kind=ResourceKind(row["kind"]), name=row["name"],
                      address=row["address"], port=row["port"], username=row["username"],
                      host_key=row["host_key"], work_dir=row["work_dir"],
                      lifecycle=Lifecycle(row["lifecycle"]))


class ResourceProjection:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, tx: Transaction, target: PollTarget, version_at: datetime) -> bool:
        """Store ``target`` unless removed or already newer; True when it was stored."""
        stored = await tx.fetchval(
            "INSERT INTO resources (id, kind, name, address, port, username, host_key, work_dir, "
            "lifecycle, version_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name, "
            "address = EXCLUDED.address, port = EXCLUDED.port, username = EXCLUDED.username, "
            "host_key = EXCLUDED.host_key, work_dir = EXCLUDED.work_dir, "
            "lifecycle = EXCLUDED.lifecycle, version_at = EXCLUDED.version_at "
            "WHERE NOT resources.removed AND resources.version_at <= EXCLUDED.version_at "
            "RETURNING true",
            target.resource_id, target.kind.value, target.name, target.address, target.port,
            target.username, target.host_key, target.work_dir, target.lifecycle.value, version_at)
        return bool(stored)

    async def remove(self, tx: Transaction, resource_id: uuid.UUID, kind: ResourceKind,
                     version_at: datetime) -> None:
        await tx.execute(
            "INSERT INTO resources (id, kind, name, address, port, username, removed, version_at) "
            "VALUES ($1, $2, '', '', 0, '', true, $3) "
            "ON CONFLICT (id) DO UPDATE SET removed = true, "
            "version_at = greatest(resources.version_at, EXCLUDED.version_at)",
            resource_id, kind.value, version_at)

    async def targets(self) -> list[PollTarget]:
        rows = await self.db.fetch(
            "SELECT * FROM resources WHERE NOT removed AND kind = ANY($1::text[]) ORDER BY name",
            [k.value for k in POLLED_KINDS])
        return [_target(r) for r in rows]
