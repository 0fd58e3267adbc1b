"""Bus subscribers: each translates one message into one handler call."""
from __future__ import annotations

from labfleet.shared.bus import Bus, Delivery
from labfleet.shared.events.alert import (
    AcknowledgeAlert,
    AlertListReply,
    AlertReply,
    DeleteAlertRule,
    DeleteAlertTarget,
    GetAlert,
    ListAlertRules,
    ListAlerts,
    ListAlertTargets,
    RuleListReply,
    RuleReply,
    SaveAlertRule,
    SaveAlertTarget,
    TargetListReply,
    TargetReply,
)
from labfleet.shared.events.build import BuildFailed, BuildRejected, BuildSucceeded
from labfleet.shared.events.deploy import BootFailed, BootVerified
from labfleet.shared.events.health import HealthChanged
from labfleet.shared.events.resource import ResourceRegistered, ResourceRemoved, ResourceUpdated

from . import handlers
from .deps import AlerterDeps


def register(bus: Bus, deps: AlerterDeps) -> None:
    register_events(bus, deps)
    register_commands(bus, deps)


def register_events(bus: Bus, deps: AlerterDeps) -> None:
    @bus.on_event(HealthChanged, purpose="health-changed")
    async def health(event: HealthChanged, msg: Delivery) -> None:
        await handlers.health_changed(event, deps)

    @bus.on_event(BuildFailed, purpose="build-failed")
    async def failed(event: BuildFailed, msg: Delivery) -> None:
        await handlers.build_failed(event, deps)

    @bus.on_event(BuildRejected, purpose="build-rejected")
    async def rejected(event: BuildRejected, msg: Delivery) -> None:
        await handlers.build_rejected(event, deps)

    @bus.on_event(BuildSucceeded, purpose="build-succeeded")
    async def succeeded(event: BuildSucceeded, msg: Delivery) -> None:
        await handlers.build_succeeded(event, deps)

    @bus.on_event(BootFailed, purpose="boot-failed")
    async def boot_failed(event: BootFailed, msg: Delivery) -> None:
        await handlers.boot_failed(event, deps)

    @bus.on_event(BootVerified, purpose="boot-verified")
    async def boot_verified(event: BootVerified, msg: Delivery) -> None:
        await handlers.boot_verified(event, deps)

    @bus.on_event(ResourceRegistered, purpose="resource-registered")
    async def registered(event: ResourceRegistered, msg: Delivery) -> None:
        await handlers.resource_seen(event.resource, deps)

    @bus.on_event(ResourceUpdated, purpose="resource-updated")
    async def updated(event: ResourceUpdated, msg: Delivery) -> None:
        await handlers.resource_seen(event.resource, deps)

    @bus.on_event(ResourceRemoved, purpose="resource-removed")
    async def removed(event: ResourceRemoved, msg: Delivery) -> None:
        await handlers.resource_removed(event, deps)


def register_commands(bus: Bus, deps: AlerterDeps) -> None:
    @bus.on_command(ListAlerts, max_workers=4)
    async def list_alerts(cmd: ListAlerts) -> AlertListReply:
        return await handlers.list_alerts(cmd, deps)

    @bus.on_command(GetAlert, max_workers=4)
    async def get_alert(cmd: GetAlert) -> AlertReply:
        return await handlers.get_alert(cmd, deps)

    @bus.on_command(AcknowledgeAlert)
    async def acknowledge(cmd: AcknowledgeAlert) -> AlertReply:
        return await handlers.acknowledge_alert(cmd, deps)

    @bus.on_command(ListAlertRules)
    async def rules(cmd: ListAlertRules) -> RuleListReply:
        return await handlers.list_rules(deps)

    @bus.on_command(SaveAlertRule)
    async def save_rule(cmd: SaveAlertRule) -> RuleReply:
        return await handlers.save_rule(cmd, deps)

    @bus.on_command(DeleteAlertRule)
    async def delete_rule(cmd: DeleteAlertRule) -> RuleReply:
        return await handlers.delete_rule(cmd, deps)

    @bus.on_command(ListAlertTargets)
    async def targets(cmd: ListAlertTargets) -> TargetListReply:
        return await handlers.list_targets(deps)

    @bus.on_command(SaveAlertTarget)
    async def save_target(cmd: SaveAlertTarget) -> TargetReply:
        return await handlers.save_target(cmd, deps)

    @bus.on_command(DeleteAlertTarget)
    async def delete_target(cmd: DeleteAlertTarget) -> TargetReply:
        return await handlers.delete_target(cmd, deps)
