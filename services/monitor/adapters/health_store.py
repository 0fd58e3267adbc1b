"""The last judged health per resource, so a restarted monitor does not announce again
transitions it already announced (the row and its ``HealthChanged`` share a transaction)."""
from __future__ import annotations

import json
import uuid

from labfleet.shared.db import Database, Transaction
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import ResourceKind

from ..domain.health import HealthState


class HealthRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self) -> dict[uuid.UUID, HealthState]:
        rows = await self.db.fetch("SELECT * FROM health")
        return {
            r["resource_id"]: HealthState(status=HealthStatus(r["status"]), reason=r["reason"],
                                          since=r["since"], last_seen=r["last_seen"],
                                          warnings=tuple(json.loads(r["warnings"])))
            for r in rows
        }

    async def save(self, tx: Transaction, resource_id: uuid.UUID, kind: ResourceKind,
                   state: HealthState) -> None:
        await tx.execute(
            "INSERT INTO health (resource_id, kind, status, reason, since, last_seen, warnings, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) "
            "ON CONFLICT (resource_id) DO UPDATE SET kind = EXCLUDED.kind, "
            "status = EXCLUDED.status, reason = EXCLUDED.reason, since = EXCLUDED.since, "
            "last_seen = EXCLUDED.last_seen, warnings = EXCLUDED.warnings, updated_at = now()",
            resource_id, kind.value, state.status.value, state.reason, state.since,
            state.last_seen, json.dumps(list(state.warnings)))

    async def delete(self, tx: Transaction, resource_id: uuid.UUID) -> None:
        await tx.execute("DELETE FROM health WHERE resource_id = $1", resource_id)
