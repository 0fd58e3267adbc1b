"""Maintenance, per-server options and decommissioning: one function per command.

Every change commits with its ``ResourceUpdated``/``ResourceRemoved`` event and an audit
row.  The scheduler reacts to the lifecycle in the event: no new placements on a server in
maintenance, its queued builds placed elsewhere, running ones left to finish.
"""
from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import nats.errors
from labfleet.shared.events.build import BuildListReply, BuildStatus, ListBuilds
from labfleet.shared.events.resource import (
    Decommission,
    Lifecycle,
    MaintenanceWindow,
    ResourceKind,
    ResourceRemoved,
    ResourceReply,
    ResourceUpdated,
    SetMaintenance,
    SetResourceOptions,
)

from .domain.errors import InventoryRefusal, not_found
from .domain.lifecycle import active_work_refusal, check_window, state_at
from .handlers import InventoryDeps

log = logging.getLogger(__name__)

#: how long the builder may take to say which builds are active on a server
BUILDER_TIMEOUT_S = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


async def set_maintenance(cmd: SetMaintenance, deps: InventoryDeps) -> ResourceReply:
    now = _now()
    window = None
    if cmd.on:
        window = MaintenanceWindow(reason=cmd.reason, start=cmd.start, end=cmd.end,
                                   set_by=cmd.requested_by, set_at=now)
        try:
            check_window(window, now)
        except InventoryRefusal as refusal:
            return ResourceReply(ok=False, error=refusal.as_error())
    state = state_at(window, now)
    async with deps.db.transaction() as tx:
        view = await deps.resources.lock(tx, cmd.resource_id)
        if view is None:
            return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
        view = await deps.resources.set_lifecycle(tx, view.resource_id, state.lifecycle,
                                                  state.maintenance)
        await tx.emit(ResourceUpdated(resource=view))
        await deps.resources.audit(
            tx, actor=cmd.requested_by, action="maintenance_on" if cmd.on else "maintenance_off",
            result="ok", resource_id=view.resource_id, resource_name=view.name,
            reason=cmd.reason, start=cmd.start, end=cmd.end, lifecycle=view.lifecycle.value)
    log.info("maintenance set", extra={"resource_id": str(view.resource_id),
                                       "lifecycle": view.lifecycle.value, "on": cmd.on})
    return ResourceReply(ok=True, resource=view)


async def apply_windows(deps: InventoryDeps, now: datetime | None = None) -> int:
    """Start windows whose time came and end those that are over; returns the changes."""
    now = now or _now()
    changed = 0
    async with deps.db.transaction() as tx:
        for view in await deps.resources.with_maintenance(tx):
            state = state_at(view.maintenance, now)
            if (state.lifecycle, state.maintenance) == (view.lifecycle, view.maintenance):
                continue
            updated = await deps.resources.set_lifecycle(tx, view.resource_id, state.lifecycle,
                                                         state.maintenance)
            await tx.emit(ResourceUpdated(resource=updated))
            await deps.resources.audit(
                tx, actor="labfleet", action="maintenance_window", result="ok",
                resource_id=view.resource_id, resource_name=view.name,
                lifecycle=state.lifecycle.value)
            changed += 1
    return changed


async def set_options(cmd: SetResourceOptions, deps: InventoryDeps) -> ResourceReply:
    async with deps.db.transaction() as tx:
        view = await deps.resources.lock(tx, cmd.resource_id)
        if view is None:
            return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
        if cmd.pause_on_low_disk is not None and cmd.pause_on_low_disk != view.pause_on_low_disk:
            view = await deps.resources.set_pause_on_low_disk(tx, view.resource_id,
                                                              cmd.pause_on_low_disk)
            await tx.emit(ResourceUpdated(resource=view))
            await deps.resources.audit(
                tx, actor=cmd.requested_by, action="set_options", result="ok",
                resource_id=view.resource_id, resource_name=view.name,
                pause_on_low_disk=cmd.pause_on_low_disk)
    return ResourceReply(ok=True, resource=view)


async def _active_builds(deps: InventoryDeps, server_id: uuid.UUID) -> list[str]:
    """Ids of builds allocated to or running on the server, as the builder knows them."""
    assert deps.bus is not None
    try:
        reply = await deps.bus.request(
            ListBuilds(server_id=server_id, active_only=True, limit=1000), BuildListReply,
            timeout=BUILDER_TIMEOUT_S)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise InventoryRefusal(
            "active_builds_unknown",
            "cannot tell whether the server has active builds: the builder "
            + ("is not running" if isinstance(exc, nats.errors.NoRespondersError)
               else f"did not answer within {BUILDER_TIMEOUT_S:g} s"),
            hint="start the builder and try again, or decommission with force",
            field="force") from None
    if not reply.ok:
        raise InventoryRefusal("active_builds_unknown",
                               f"the builder could not list the server's builds: "
                               f"{reply.error.message if reply.error else 'no reason given'}",
                               hint="try again, or decommission with force", field="force")
    running = (BuildStatus.ALLOCATED, BuildStatus.RUNNING)
    return [str(b.build_id) for b in reply.builds
            if b.status in running and b.server_id == server_id]


async def decommission(cmd: Decommission, deps: InventoryDeps) -> ResourceReply:
    view = await deps.resources.get(cmd.resource_id)
    if view is None:
        return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
    active: list[str] = []
    if view.kind == ResourceKind.BUILD_SERVER and not cmd.force:
        try:
            active = await _active_builds(deps, view.resource_id)
            if active:
                raise active_work_refusal(view.name, active)
        except InventoryRefusal as refusal:
            await deps.resources.audit(deps.db, actor=cmd.requested_by, action="decommission",
                                       result=refusal.code, resource_id=view.resource_id,
                                       resource_name=view.name, builds=active)
            return ResourceReply(ok=False, resource=view, error=refusal.as_error())
    async with deps.db.transaction() as tx:
        removed = await deps.resources.remove(tx, cmd.resource_id)
        if removed is None:
            return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
        await tx.emit(ResourceRemoved(resource_id=removed.resource_id, kind=removed.kind))
        await deps.resources.audit(tx, actor=cmd.requested_by, action="decommission",
                                   result="ok", resource_id=removed.resource_id,
                                   resource_name=removed.name, force=cmd.force)
    log.info("resource decommissioned", extra={"resource_id": str(removed.resource_id),
                                               "resource_name": removed.name,
                                               "force": cmd.force})
    return ResourceReply(ok=True, resource=removed.model_copy(
        update={"lifecycle": Lifecycle.RETIRED}))
