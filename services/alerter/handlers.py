"""One plain function per event or command; dependencies come as arguments.

Event handlers turn a fact into signals (``domain.signals``) and apply them in one
transaction that also records the event as handled, writes the alert events to the outbox
and queues the deliveries — a crash anywhere leaves either all of it or none.
"""
from __future__ import annotations

import logging
import uuid

from labfleet.shared.db import Transaction
from labfleet.shared.events.alert import (
    AcknowledgeAlert,
    AlertAcknowledged,
    AlertListReply,
    AlertRaised,
    AlertRepeated,
    AlertReply,
    AlertResolved,
    DeleteAlertRule,
    DeleteAlertTarget,
    GetAlert,
    ListAlerts,
    RuleListReply,
    RuleReply,
    SaveAlertRule,
    SaveAlertTarget,
    TargetKind,
    TargetListReply,
    TargetReply,
)
from labfleet.shared.events.build import BuildFailed, BuildRejected, BuildSucceeded
from labfleet.shared.events.deploy import BootFailed, BootVerified
from labfleet.shared.events.envelope import Event
from labfleet.shared.events.health import HealthChanged
from labfleet.shared.events.resource import ResourceKind, ResourceRemoved, ResourceView
from labfleet.shared.bus import error_reply

from .adapters import repository as repo
from .deps import AlerterDeps
from .domain.rules import matching_rules
from .domain.signals import (
    Signal,
    boot_failed_signal,
    boot_verified_signal,
    build_failed_signal,
    build_recovered_signal,
    build_rejected_signal,
    health_signals,
)

log = logging.getLogger(__name__)


# ---- applying signals -------------------------------------------------------------------


async def _raise(tx: Transaction, signal: Signal, deps: AlerterDeps) -> int:
    info = await repo.resource_info(tx, signal.resource_id)
    labels = info.labels if info else {}
    rules = matching_rules(await repo.enabled_rules(tx), signal, labels)
    queued = 0
    for rule in rules:
        standing = await repo.standing_alert(tx, rule.rule_id, signal.condition,
                                             signal.subject_id)
        if standing is not None:  # dedupe: the same alert, counted once more
            view = await repo.raise_again(tx, standing["alert_id"], signal, reopen=False)
            await tx.emit(AlertRepeated(alert=view))
            continue
        recent = await repo.recently_resolved(tx, rule.rule_id, signal.condition,
                                              signal.subject_id, deps.config.flap_window_s)
        if recent is not None:  # flapping: bring the same alert back, counted
            view = await repo.raise_again(tx, recent["alert_id"], signal, reopen=True)
            await tx.emit(AlertRaised(alert=view, reopened=True))
        else:
            view = await repo.insert_alert(tx, rule, signal, info.name if info else None)
            await tx.emit(AlertRaised(alert=view))
        for target_id in rule.target_ids:
            await repo.enqueue_delivery(tx, view.alert_id, target_id, "raised",
                                        deps.config.notify_interval_s)
            queued += 1
        log.info("alert raised", extra={"alert_id": str(view.alert_id), "rule": rule.name,
                                        "condition": signal.condition.value,
                                        "subject_id": str(signal.subject_id),
                                        "count": view.count})
    return queued


async def _clear(tx: Transaction, signal: Signal, deps: AlerterDeps) -> int:
    queued = 0
    for row in await repo.standing_alerts_for(tx, signal.condition, signal.subject_id):
        view = await repo.resolve_alert(tx, row["alert_id"], signal.resolution)
        await tx.emit(AlertResolved(alert=view))
        target_ids = await tx.fetchval("SELECT target_ids FROM rules WHERE rule_id = $1",
                                       view.rule_id) or []
        for target_id in target_ids:
            await repo.enqueue_delivery(tx, view.alert_id, target_id, "resolved",
                                        deps.config.notify_interval_s)
            queued += 1
        log.info("alert resolved", extra={"alert_id": str(view.alert_id),
                                          "resolution": signal.resolution})
    return queued


async def apply_signals(tx: Transaction, signals: list[Signal], deps: AlerterDeps) -> None:
    queued = 0
    for signal in signals:
        queued += await (_raise if signal.raised else _clear)(tx, signal, deps)
    if queued:
        deps.deliveries_queued.set()  # early; the worker only sees committed rows anyway


async def _consume(purpose: str, event: Event, deps: AlerterDeps, signals: list[Signal]
                   ) -> None:
    async with deps.db.consume(purpose, event) as tx:
        if tx is None:
            return
        await apply_signals(tx, signals, deps)
    if signals:
        deps.deliveries_queued.set()


async def _name(deps: AlerterDeps, resource_id: uuid.UUID | None) -> str | None:
    info = await repo.resource_info(deps.db, resource_id)
    return info.name if info else None


# ---- events ------------------------------------------------------------------------------


async def health_changed(event: HealthChanged, deps: AlerterDeps) -> None:
    signals = health_signals(event, await _name(deps, event.resource_id))
    await _consume("health-changed", event, deps, signals)


async def build_failed(event: BuildFailed, deps: AlerterDeps) -> None:
    signal = build_failed_signal(event, await _name(deps, event.server_id))
    await _consume("build-failed", event, deps, [signal])


async def build_rejected(event: BuildRejected, deps: AlerterDeps) -> None:
    await _consume("build-rejected", event, deps, [build_rejected_signal(event)])


async def build_succeeded(event: BuildSucceeded, deps: AlerterDeps) -> None:
    await _consume("build-succeeded", event, deps,
                   [build_recovered_signal(event.build_id, event.occurred_at)])


async def boot_failed(event: BootFailed, deps: AlerterDeps) -> None:
    signal = boot_failed_signal(event, await _name(deps, event.host_id))
    await _consume("boot-failed", event, deps, [signal])


async def boot_verified(event: BootVerified, deps: AlerterDeps) -> None:
    await _consume("boot-verified", event, deps,
                   [boot_verified_signal(event.env_id, event.occurred_at)])


async def resource_seen(view: ResourceView, deps: AlerterDeps) -> None:
    await repo.remember_resource(deps.db, view)


async def resource_removed(event: ResourceRemoved, deps: AlerterDeps) -> None:
    await repo.forget_resource(deps.db, event.resource_id)


# ---- commands: alerts --------------------------------------------------------------------


async def list_alerts(cmd: ListAlerts, deps: AlerterDeps) -> AlertListReply:
    alerts = await repo.list_alerts(deps.db, cmd.statuses, cmd.limit)
    return AlertListReply(ok=True, alerts=alerts, open_count=await repo.open_count(deps.db))


def _no_alert(alert_id: uuid.UUID) -> AlertReply:
    return error_reply(AlertReply, "alert_not_found", f"there is no alert {alert_id}",
                       "list the alerts (GET /api/v1/alerts) for valid ids")


async def get_alert(cmd: GetAlert, deps: AlerterDeps) -> AlertReply:
    alert = await repo.get_alert(deps.db, cmd.alert_id)
    if alert is None:
        return _no_alert(cmd.alert_id)
    return AlertReply(ok=True, alert=alert,
                      deliveries=await repo.deliveries_of(deps.db, cmd.alert_id))


async def acknowledge_alert(cmd: AcknowledgeAlert, deps: AlerterDeps) -> AlertReply:
    async with deps.db.transaction() as tx:
        alert, changed = await repo.acknowledge(tx, cmd.alert_id, cmd.by or "someone")
        if alert is None:
            return _no_alert(cmd.alert_id)
        if changed:
            await tx.emit(AlertAcknowledged(alert=alert))
    return AlertReply(ok=True, alert=alert)


# ---- commands: rules ---------------------------------------------------------------------


async def list_rules(deps: AlerterDeps) -> RuleListReply:
    return RuleListReply(ok=True, rules=await repo.rule_views(deps.db))


async def save_rule(cmd: SaveAlertRule, deps: AlerterDeps) -> RuleReply:
    spec = cmd.rule
    kinds = [k.value for k in ResourceKind]
    if spec.resource_kind is not None and spec.resource_kind not in kinds:
        return error_reply(RuleReply, "invalid_resource_kind",
                           f"resource kind {spec.resource_kind!r} is unknown",
                           f"use one of {', '.join(kinds)}, or leave it empty for any",
                           "resource_kind")
    async with deps.db.transaction() as tx:
        found = await repo.target_ids_by_reference(tx, spec.targets)
        missing = [t for t in spec.targets if t not in found]
        if missing:
            names = [t.view.name for t in await repo.targets(tx)]
            return error_reply(RuleReply, "unknown_target",
                               f"no notification target named {', '.join(missing)}",
                               "create it first (POST /api/v1/alert-targets); existing: "
                               + (", ".join(names) or "none"), "targets")
        rule_id = cmd.rule_id or uuid.uuid4()
        if cmd.rule_id is not None and await tx.fetchval(
                "SELECT 1 FROM rules WHERE rule_id = $1", cmd.rule_id) is None:
            return error_reply(RuleReply, "rule_not_found", f"there is no rule {cmd.rule_id}",
                               "list the rules (GET /api/v1/alert-rules) for valid ids")
        clash = await tx.fetchval("SELECT rule_id FROM rules WHERE name = $1 AND rule_id <> $2",
                                  spec.name, rule_id)
        if clash is not None:
            return error_reply(RuleReply, "rule_name_taken",
                               f"a rule named {spec.name!r} exists already ({clash})",
                               "choose another name, or edit that rule", "name")
        await repo.save_rule(tx, rule_id, spec, list(dict.fromkeys(found[t] for t in spec.targets)))
    view = next(r for r in await repo.rule_views(deps.db) if r.rule_id == rule_id)
    return RuleReply(ok=True, rule=view)


async def delete_rule(cmd: DeleteAlertRule, deps: AlerterDeps) -> RuleReply:
    if not await repo.delete_rule(deps.db, cmd.rule_id):
        return error_reply(RuleReply, "rule_not_found", f"there is no rule {cmd.rule_id}",
                           "list the rules (GET /api/v1/alert-rules) for valid ids")
    return RuleReply(ok=True)


# ---- commands: targets -------------------------------------------------------------------


async def list_targets(deps: AlerterDeps) -> TargetListReply:
    return TargetListReply(ok=True, targets=[t.view for t in await repo.targets(deps.db)])


MIN_SECRET = 16


async def save_target(cmd: SaveAlertTarget, deps: AlerterDeps) -> TargetReply:
    spec = cmd.target
    secret = spec.secret.get_secret_value() if spec.secret is not None else None
    if spec.kind is TargetKind.EMAIL:
        bad = [a for a in spec.addresses if "@" not in a or any(c.isspace() for c in a)]
        if not spec.addresses or bad:
            return error_reply(TargetReply, "invalid_addresses",
                               f"an email target needs recipient addresses; not valid: "
                               f"{', '.join(bad) or '(none given)'}",
                               "give addresses like ops@example.org", "addresses")
        url, sealed = None, None
    else:
        url = (spec.url or "").strip()
        if not url.startswith(("http://", "https://")):
            return error_reply(TargetReply, "invalid_url",
                               f"a webhook target needs an http(s) URL, not {url!r}",
                               "give the receiver's URL, e.g. https://chat.example.org/hook",
                               "url")
        if cmd.target_id is None and secret is None:
            return error_reply(TargetReply, "secret_required",
                               "a webhook target needs a secret to sign its requests with",
                               f"give a random string of at least {MIN_SECRET} characters; "
                               "the receiver checks X-Labfleet-Signature with it", "secret")
        if secret is not None and len(secret) < MIN_SECRET:
            return error_reply(TargetReply, "secret_too_short",
                               f"the webhook secret has {len(secret)} characters; at least "
                               f"{MIN_SECRET} are needed", "use a longer random string",
                               "secret")
        if secret is not None and deps.box is None:
            return error_reply(TargetReply, "credential_key_missing",
                               "the alerter cannot store a webhook secret: "
                               "LABFLEET_CREDENTIAL_KEY is not set",
                               "set it for the alerter (labfleet up does this for you)")
        sealed = deps.box.seal(secret) if (secret is not None and deps.box) else None
    target_id = cmd.target_id or uuid.uuid4()
    async with deps.db.transaction() as tx:
        if cmd.target_id is not None and await repo.target(tx, cmd.target_id) is None:
            return error_reply(TargetReply, "target_not_found",
                               f"there is no notification target {cmd.target_id}",
                               "list them (GET /api/v1/alert-targets) for valid ids")
        clash = await tx.fetchval(
            "SELECT target_id FROM targets WHERE name = $1 AND target_id <> $2",
            spec.name, target_id)
        if clash is not None:
            return error_reply(TargetReply, "target_name_taken",
                               f"a target named {spec.name!r} exists already ({clash})",
                               "choose another name, or edit that target", "name")
        await repo.save_target(tx, target_id, spec.name, spec.kind, spec.addresses, url,
                               sealed, spec.enabled)
        saved = await repo.target(tx, target_id)
    assert saved is not None
    return TargetReply(ok=True, target=saved.view)


async def delete_target(cmd: DeleteAlertTarget, deps: AlerterDeps) -> TargetReply:
    async with deps.db.transaction() as tx:
        if not await repo.delete_target(tx, cmd.target_id):
            return error_reply(TargetReply, "target_not_found",
                               f"there is no notification target {cmd.target_id}",
                               "list them (GET /api/v1/alert-targets) for valid ids")
    return TargetReply(ok=True)
