"""The inventory's tables: resources, sealed credentials, audit rows.

Credentials are sealed (:class:`labfleet.shared.secrets.SecretBox`) before they reach this
module and opened only by :meth:`ResourceRepository.sealed_credentials`' caller; the
resource views it returns never carry them.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from labfleet.shared.db import Database, Transaction
from labfleet.shared.events.fields import canonical_address, canonical_hostname
from labfleet.shared.events.resource import (
    BuildServerCapabilities,
    Lifecycle,
    MaintenanceWindow,
    QemuHostCapabilities,
    ResourceKind,
    ResourceView,
    SshTarget,
)

from ..domain.errors import InventoryRefusal

_COLUMNS = ("id, kind, name, address, port, username, host_key, host_key_fingerprint, "
            "architectures, build_configs, capabilities, labels, lifecycle, registered_at, "
            "maintenance, pause_on_low_disk")


@dataclass
class SealedCredentials:
    password: bytes | None = None
    private_key: bytes | None = None

    def __repr__(self) -> str:
        return "SealedCredentials(***)"


@dataclass
class StoredResource:
    view: ResourceView
    credentials: SealedCredentials = field(default_factory=SealedCredentials)


def _view(row: asyncpg.Record) -> ResourceView:
    kind = ResourceKind(row["kind"])
    caps = row["capabilities"]
    return ResourceView(
        resource_id=row["id"],
        kind=kind,
        name=row["name"],
        ssh=SshTarget(address=row["address"] or "", port=row["port"] or 22,
                      username=row["username"] or "", host_key=row["host_key"],
                      host_key_fingerprint=row["host_key_fingerprint"]),
        architectures=list(row["architectures"]),
        build_configs=list(row["build_configs"]),
        capabilities=(BuildServerCapabilities.model_validate_json(caps)
                      if caps and kind is ResourceKind.BUILD_SERVER else None),
        qemu=(QemuHostCapabilities.model_validate_json(caps)
              if caps and kind is ResourceKind.QEMU_HOST else None),
        labels=json.loads(row["labels"]),
        lifecycle=Lifecycle(row["lifecycle"]),
        registered_at=row["registered_at"],
        maintenance=(MaintenanceWindow.model_validate_json(row["maintenance"])
                     if row["maintenance"] else None),
        pause_on_low_disk=row["pause_on_low_disk"],
    )


def _capabilities_json(view: ResourceView) -> str | None:
    """The kind's own capabilities go in the one JSON column."""
    if view.qemu is not None:
        return view.qemu.model_dump_json()
    return view.capabilities.model_dump_json() if view.capabilities else None


def duplicate_name(name: str) -> InventoryRefusal:
    return InventoryRefusal(
        "duplicate_name", f"a resource named {name!r} is already registered",
        hint="choose another name, or remove the existing resource first", field="hostname")


def duplicate_address(address: str, port: int) -> InventoryRefusal:
    return InventoryRefusal(
        "duplicate_address", f"a resource of this kind at {address}:{port} is already registered",
        hint="this host is registered under another name; edit or remove that one",
        field="address")


class ResourceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def check_free(self, kind: ResourceKind, name: str, address: str, port: int) -> None:
        """Refuse early (before any SSH) a name or address already taken: names compare
        without case, addresses in their canonical form (``10.231.11`` is
        ``10.231.0.11``), whatever form an older row was stored in."""
        name, address = canonical_hostname(name), canonical_address(address)
        row = await self.db.fetchrow(
            "SELECT bool_or(lower(name) = $2) AS name_taken, "
            "bool_or(kind = $1 AND lower(address) = $3 AND port = $4) AS address_taken "
            "FROM resources WHERE lower(name) = $2 OR (kind = $1 AND lower(address) = $3 "
            "AND port = $4)",
            kind.value, name, address, port)
        if not (row and (row["name_taken"] or row["address_taken"])):
            row = await self._taken_in_another_form(kind, address, port) or row
        if row and row["name_taken"]:
            raise duplicate_name(name)
        if row and row["address_taken"]:
            raise duplicate_address(address, port)

    async def _taken_in_another_form(self, kind: ResourceKind, address: str, port: int
                                     ) -> dict[str, bool] | None:
        """Rows stored before addresses were canonicalised, compared in canonical form."""
        rows = await self.db.fetch(
            "SELECT address FROM resources WHERE kind = $1 AND port = $2", kind.value, port)
        for r in rows:
            try:
                if canonical_address(r["address"] or "") == address:
                    return {"name_taken": False, "address_taken": True}
            except ValueError:
                continue
        return None

    async def add(self, tx: Transaction, resource: StoredResource) -> None:
        """Insert; a name or address taken meanwhile by a concurrent registration is refused."""
        v = resource.view
        try:
            await tx.execute(
                f"INSERT INTO resources ({_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                v.resource_id, v.kind.value, v.name, v.ssh.address, v.ssh.port, v.ssh.username,
                v.ssh.host_key, v.ssh.host_key_fingerprint,
                [a.value for a in v.architectures], v.build_configs,
                _capabilities_json(v),
                json.dumps(v.labels), v.lifecycle.value, v.registered_at,
                v.maintenance.model_dump_json() if v.maintenance else None,
                v.pause_on_low_disk)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "resources_name_unique":
                raise duplicate_name(v.name) from None
            if exc.constraint_name == "resources_address_unique":
                raise duplicate_address(v.ssh.address, v.ssh.port) from None
            raise
        await tx.execute(
            "INSERT INTO credentials (resource_id, password_sealed, private_key_sealed) "
            "VALUES ($1, $2, $3)",
            v.resource_id, resource.credentials.password, resource.credentials.private_key)

    async def get(self, resource_id: uuid.UUID) -> ResourceView | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM resources WHERE id = $1",
                                     resource_id)
        return _view(row) if row else None

    async def list(self, kind: ResourceKind | None = None) -> list[ResourceView]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM resources WHERE $1::text IS NULL OR kind = $1 "
            "ORDER BY kind, name", kind.value if kind else None)
        return [_view(r) for r in rows]

    async def sealed_credentials(self, resource_id: uuid.UUID) -> StoredResource | None:
        row = await self.db.fetchrow(
            f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))}, "
            "c.password_sealed, c.private_key_sealed "
            "FROM resources r LEFT JOIN credentials c ON c.resource_id = r.id WHERE r.id = $1",
            resource_id)
        if row is None:
            return None
        return StoredResource(_view(row), SealedCredentials(row["password_sealed"],
                                                            row["private_key_sealed"]))

    async def lock(self, tx: Transaction, resource_id: uuid.UUID) -> ResourceView | None:
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM resources WHERE id = $1 FOR UPDATE",
                                resource_id)
        return _view(row) if row else None

    async def set_lifecycle(self, tx: Transaction, resource_id: uuid.UUID, lifecycle: Lifecycle,
                            maintenance: MaintenanceWindow | None) -> ResourceView:
        row = await tx.fetchrow(
            f"UPDATE resources SET lifecycle = $2, maintenance = $3, updated_at = now() "
            f"WHERE id = $1 RETURNING {_COLUMNS}", resource_id, lifecycle.value,
            maintenance.model_dump_json() if maintenance else None)
        return _view(row)

    async def set_pause_on_low_disk(self, tx: Transaction, resource_id: uuid.UUID,
                                    pause: bool) -> ResourceView:
        row = await tx.fetchrow(
            f"UPDATE resources SET pause_on_low_disk = $2, updated_at = now() "
            f"WHERE id = $1 RETURNING {_COLUMNS}", resource_id, pause)
        return _view(row)

    async def set_host_key(self, tx: Transaction, resource_id: uuid.UUID, host_key: str,
                           host_key_fingerprint: str) -> ResourceView:
        row = await tx.fetchrow(
            f"UPDATE resources SET host_key = $2, host_key_fingerprint = $3, updated_at = now() "
            f"WHERE id = $1 RETURNING {_COLUMNS}", resource_id, host_key, host_key_fingerprint)
        return _view(row)

    async def with_maintenance(self, tx: Transaction) -> list[ResourceView]:
        """Resources that have a maintenance window (current or upcoming), locked."""
        rows = await tx.fetch(f"SELECT {_COLUMNS} FROM resources WHERE maintenance IS NOT NULL "
                              "ORDER BY id FOR UPDATE")
        return [_view(r) for r in rows]

    async def remove(self, tx: Transaction, resource_id: uuid.UUID) -> ResourceView | None:
        row = await tx.fetchrow(f"DELETE FROM resources WHERE id = $1 RETURNING {_COLUMNS}",
                                resource_id)
        return _view(row) if row else None

    async def audit(self, conn: Transaction | Database, *, actor: str, action: str,
                    result: str, resource_id: uuid.UUID | None = None,
                    resource_name: str | None = None, **detail: Any) -> None:
        """One row per attempt; ``detail`` must never hold a secret (callers pass plain facts)."""
        await conn.execute(
            "INSERT INTO audit_log (actor, action, resource_id, resource_name, result, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            actor, action, resource_id, resource_name, result, json.dumps(detail, default=str))
