"""The alerter's tables.  Functions take a ``Transaction`` or the ``Database`` (both query)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from labfleet.shared.events.alert import (
    AlertCondition,
    AlertStatus,
    AlertView,
    DeliveryView,
    RuleSpec,
    RuleView,
    Severity,
    TargetKind,
    TargetView,
)
from labfleet.shared.events.resource import ResourceView

from ..domain.rules import Rule
from ..domain.signals import Signal

Conn = Any  # labfleet.shared.db Transaction or Database

ALERT_COLUMNS = (
    "alert_id, rule_id, rule_name, condition, severity, status, subject_type, subject_id, "
    "resource_id, resource_kind, resource_name, title, detail, count, first_raised_at, "
    "last_raised_at, occurred_at, acknowledged_at, acknowledged_by, resolved_at, resolution")


def alert_view(row: Any) -> AlertView:
    return AlertView.model_validate(dict(row))


# ---- resources (projection of resource.* events) ---------------------------------------


@dataclass(frozen=True)
class ResourceInfo:
    name: str
    kind: str
    labels: dict[str, str]


async def remember_resource(conn: Conn, view: ResourceView) -> None:
    await conn.execute(
        "INSERT INTO resources (resource_id, kind, name, labels) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (resource_id) DO UPDATE SET kind = $2, name = $3, labels = $4, "
        "removed = false, updated_at = now()",
        view.resource_id, view.kind.value, view.name, json.dumps(view.labels))


async def forget_resource(conn: Conn, resource_id: uuid.UUID) -> None:
    await conn.execute("UPDATE resources SET removed = true, updated_at = now() "
                       "WHERE resource_id = $1", resource_id)


async def resource_info(conn: Conn, resource_id: uuid.UUID | None) -> ResourceInfo | None:
    if resource_id is None:
        return None
    row = await conn.fetchrow("SELECT name, kind, labels FROM resources WHERE resource_id = $1",
                              resource_id)
    if row is None:
        return None
    return ResourceInfo(row["name"], row["kind"], json.loads(row["labels"]))


# ---- rules -------------------------------------------------------------------------------


def _rule(row: Any) -> Rule:
    return Rule(rule_id=row["rule_id"], name=row["name"],
                conditions=frozenset(AlertCondition(c) for c in row["conditions"]),
                min_severity=Severity(row["min_severity"]), resource_kind=row["resource_kind"],
                labels=json.loads(row["labels"]), enabled=row["enabled"],
                target_ids=tuple(row["target_ids"]))


async def enabled_rules(conn: Conn) -> list[Rule]:
    rows = await conn.fetch("SELECT * FROM rules WHERE enabled ORDER BY created_at, name")
    return [_rule(r) for r in rows]


async def rule_views(conn: Conn) -> list[RuleView]:
    rows = await conn.fetch("SELECT * FROM rules ORDER BY created_at, name")
    names = {r["target_id"]: r["name"] for r in await conn.fetch(
        "SELECT target_id, name FROM targets")}
    return [RuleView(rule_id=r["rule_id"], name=r["name"], conditions=list(r["conditions"]),
                     min_severity=r["min_severity"], resource_kind=r["resource_kind"],
                     labels=json.loads(r["labels"]), enabled=r["enabled"],
                     targets=[names.get(t, str(t)) for t in r["target_ids"]],
                     created_at=r["created_at"]) for r in rows]


async def save_rule(conn: Conn, rule_id: uuid.UUID, spec: RuleSpec,
                    target_ids: list[uuid.UUID]) -> None:
    await conn.execute(
        "INSERT INTO rules (rule_id, name, conditions, min_severity, resource_kind, labels, "
        "enabled, target_ids) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (rule_id) DO UPDATE SET name = $2, conditions = $3, min_severity = $4, "
        "resource_kind = $5, labels = $6, enabled = $7, target_ids = $8",
        rule_id, spec.name, [c.value for c in spec.conditions], spec.min_severity.value,
        spec.resource_kind, json.dumps(spec.labels), spec.enabled, target_ids)


async def delete_rule(conn: Conn, rule_id: uuid.UUID) -> bool:
    return await conn.execute("DELETE FROM rules WHERE rule_id = $1", rule_id) != "DELETE 0"


# ---- targets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    view: TargetView
    #: the sealed webhook secret (open it with the SecretBox)
    sealed_secret: bytes | None


def _target(row: Any) -> Target:
    view = TargetView(target_id=row["target_id"], name=row["name"], kind=TargetKind(row["kind"]),
                      addresses=list(row["addresses"]), url=row["url"],
                      has_secret=row["secret"] is not None, enabled=row["enabled"])
    return Target(view, bytes(row["secret"]) if row["secret"] is not None else None)


async def targets(conn: Conn) -> list[Target]:
    return [_target(r) for r in await conn.fetch("SELECT * FROM targets ORDER BY name")]


async def target(conn: Conn, target_id: uuid.UUID) -> Target | None:
    row = await conn.fetchrow("SELECT * FROM targets WHERE target_id = $1", target_id)
    return _target(row) if row else None


async def target_ids_by_reference(conn: Conn, refs: list[str]) -> dict[str, uuid.UUID]:
    """Each reference (a target's name or id) that exists → its id."""
    rows = await conn.fetch("SELECT target_id, name FROM targets")
    found: dict[str, uuid.UUID] = {}
    for ref in refs:
        for r in rows:
            if ref == r["name"] or ref == str(r["target_id"]):
                found[ref] = r["target_id"]
    return found


async def save_target(conn: Conn, target_id: uuid.UUID, name: str, kind: TargetKind,
                      addresses: list[str], url: str | None, sealed: bytes | None,
                      enabled: bool) -> None:
    """Insert or replace; a None ``sealed`` keeps the stored secret."""
    await conn.execute(
        "INSERT INTO targets (target_id, name, kind, addresses, url, secret, enabled) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (target_id) DO UPDATE SET "
        "name = $2, kind = $3, addresses = $4, url = $5, "
        "secret = COALESCE($6, targets.secret), enabled = $7",
        target_id, name, kind.value, addresses, url, sealed, enabled)


async def delete_target(conn: Conn, target_id: uuid.UUID) -> bool:
    await conn.execute("UPDATE rules SET target_ids = array_remove(target_ids, $1)", target_id)
    return await conn.execute("DELETE FROM targets WHERE target_id = $1",
                              target_id) != "DELETE 0"


# ---- alerts ------------------------------------------------------------------------------


async def standing_alert(conn: Conn, rule_id: uuid.UUID, condition: AlertCondition,
                         subject_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = $1 AND condition = $2 "
        "AND subject_id = $3 AND status <> 'resolved' FOR UPDATE",
        rule_id, condition.value, subject_id)


async def recently_resolved(conn: Conn, rule_id: uuid.UUID, condition: AlertCondition,
                            subject_id: uuid.UUID, window_s: float) -> Any:
    return await conn.fetchrow(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = $1 AND condition = $2 "
        "AND subject_id = $3 AND status = 'resolved' "
        "AND resolved_at > now() - make_interval(secs => $4) "
        "ORDER BY resolved_at DESC LIMIT 1 FOR UPDATE",
        rule_id, condition.value, subject_id, window_s)


async def insert_alert(conn: Conn, rule: Rule, signal: Signal,
                       resource_name: str | None) -> AlertView:
    row = await conn.fetchrow(
        "INSERT INTO alerts (alert_id, rule_id, rule_name, condition, severity, subject_type, "
        "subject_id, resource_id, resource_kind, resource_name, title, detail, occurred_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
        f"RETURNING {ALERT_COLUMNS}",
        uuid.uuid4(), rule.rule_id, rule.name, signal.condition.value, signal.severity.value,
        signal.subject_type.value, signal.subject_id, signal.resource_id, signal.resource_kind,
        resource_name, signal.title, signal.detail, signal.occurred_at)
    return alert_view(row)


async def raise_again(conn: Conn, alert_id: uuid.UUID, signal: Signal, *,
                      reopen: bool) -> AlertView:
    """Count one more raise; ``reopen`` brings a resolved alert back (unacknowledged)."""
    reopening = ("status = 'open', resolved_at = NULL, resolution = NULL, "
                 "acknowledged_at = NULL, acknowledged_by = NULL, " if reopen else "")
    row = await conn.fetchrow(
        f"UPDATE alerts SET {reopening}count = count + 1, last_raised_at = now(), "
        "severity = $2, title = $3, detail = $4, occurred_at = $5 "
        f"WHERE alert_id = $1 RETURNING {ALERT_COLUMNS}",
        alert_id, signal.severity.value, signal.title, signal.detail, signal.occurred_at)
    return alert_view(row)


async def standing_alerts_for(conn: Conn, condition: AlertCondition,
                              subject_id: uuid.UUID) -> list[Any]:
    return list(await conn.fetch(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE condition = $1 AND subject_id = $2 "
        "AND status <> 'resolved' FOR UPDATE", condition.value, subject_id))


async def resolve_alert(conn: Conn, alert_id: uuid.UUID, resolution: str) -> AlertView:
    row = await conn.fetchrow(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolution = $2 "
        f"WHERE alert_id = $1 RETURNING {ALERT_COLUMNS}", alert_id, resolution)
    return alert_view(row)


async def acknowledge(conn: Conn, alert_id: uuid.UUID, by: str) -> tuple[AlertView | None, bool]:
    """The alert after acknowledging, and whether this call changed it."""
    row = await conn.fetchrow(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(), "
        "acknowledged_by = $2 WHERE alert_id = $1 AND status = 'open' "
        f"RETURNING {ALERT_COLUMNS}", alert_id, by)
    if row is not None:
        return alert_view(row), True
    row = await conn.fetchrow(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = $1",
                              alert_id)
    return (alert_view(row) if row else None), False


async def get_alert(conn: Conn, alert_id: uuid.UUID) -> AlertView | None:
    row = await conn.fetchrow(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = $1",
                              alert_id)
    return alert_view(row) if row else None


async def list_alerts(conn: Conn, statuses: list[AlertStatus], limit: int) -> list[AlertView]:
    wanted = [s.value for s in statuses] or [s.value for s in AlertStatus]
    # standing alerts first (newest raise first), then the recently resolved
    rows = await conn.fetch(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE status = ANY($1) "
        "ORDER BY (status = 'resolved'), last_raised_at DESC LIMIT $2", wanted, limit)
    return [alert_view(r) for r in rows]


async def open_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM alerts WHERE status <> 'resolved'"))


# ---- deliveries (the outbox the worker sends) -------------------------------------------


async def enqueue_delivery(conn: Conn, alert_id: uuid.UUID, target_id: uuid.UUID, event: str,
                           interval_s: float) -> None:
    """Ask for ``event`` to reach the target, folding it into a delivery still waiting.

    A target hears of one alert at most once per ``interval_s``: the next message waits
    until then and says whatever the alert's state is by that time.
    """
    pending = await conn.fetchrow(
        "SELECT delivery_id FROM deliveries WHERE alert_id = $1 AND target_id = $2 "
        "AND status = 'pending' FOR UPDATE", alert_id, target_id)
    if pending is not None:
        await conn.execute("UPDATE deliveries SET event = $2, version = version + 1 "
                           "WHERE delivery_id = $1", pending["delivery_id"], event)
        return
    await conn.execute(
        "INSERT INTO deliveries (alert_id, target_id, event, next_attempt_at) VALUES ($1, $2, "
        "$3, GREATEST(now(), (SELECT max(delivered_at) FROM deliveries WHERE alert_id = $1 "
        "AND target_id = $2 AND status = 'delivered') + make_interval(secs => $4)))",
        alert_id, target_id, event, interval_s)


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    alert_id: uuid.UUID
    target_id: uuid.UUID
    event: str
    version: int
    attempts: int


async def claim_due(conn: Conn, lease_s: float, limit: int = 20) -> list[Claimed]:
    """Take deliveries whose time has come; a worker that dies leaves them for the lease."""
    rows = await conn.fetch(
        "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $1) "
        "WHERE delivery_id IN (SELECT delivery_id FROM deliveries WHERE status = 'pending' "
        "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $2 "
        "FOR UPDATE SKIP LOCKED) "
        "RETURNING delivery_id, alert_id, target_id, event, version, attempts",
        lease_s, limit)
    return [Claimed(**dict(r)) for r in sorted(rows, key=lambda r: r["delivery_id"])]


async def last_delivered_event(conn: Conn, alert_id: uuid.UUID,
                               target_id: uuid.UUID) -> str | None:
    return await conn.fetchval(
        "SELECT event FROM deliveries WHERE alert_id = $1 AND target_id = $2 "
        "AND status = 'delivered' ORDER BY delivered_at DESC LIMIT 1", alert_id, target_id)


async def finish_delivery(conn: Conn, claimed: Claimed, status: str,
                          error: str | None = None) -> None:
    """Record the outcome; if the delivery changed meanwhile, send it again at once."""
    done = await conn.execute(
        "UPDATE deliveries SET status = $3, attempts = attempts + 1, last_error = $4, "
        "delivered_at = CASE WHEN $3 = 'delivered' THEN now() END "
        "WHERE delivery_id = $1 AND version = $2", claimed.delivery_id, claimed.version,
        status, error)
    if done == "UPDATE 0":
        await conn.execute("UPDATE deliveries SET attempts = attempts + 1, "
                           "next_attempt_at = now() WHERE delivery_id = $1",
                           claimed.delivery_id)


async def retry_delivery(conn: Conn, claimed: Claimed, error: str, delay_s: float) -> None:
    await conn.execute(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = $2, "
        "next_attempt_at = now() + make_interval(secs => $3) WHERE delivery_id = $1",
        claimed.delivery_id, error, delay_s)


async def deliveries_of(conn: Conn, alert_id: uuid.UUID) -> list[DeliveryView]:
    rows = await conn.fetch(
        "SELECT d.delivery_id, d.alert_id, d.target_id, t.name AS target_name, t.kind, "
        "d.event, d.status, d.attempts, d.last_error, d.created_at, d.delivered_at, "
        "CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at "
        "FROM deliveries d JOIN targets t USING (target_id) WHERE d.alert_id = $1 "
        "ORDER BY d.delivery_id", alert_id)
    return [DeliveryView.model_validate(dict(r)) for r in rows]


