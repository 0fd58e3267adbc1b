"""Lifecycle of build servers, build history and details, as plain functions.

Like ``handlers``, shared by the API routes, the pages and (through the API) the CLI.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from labfleet.shared.events.build import (
    BuildListReply,
    BuildReply,
    BuildStatus,
    BuildView,
    ListBuilds,
    PinBuild,
    TagBuild,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import GetSampleHistory, SampleHistoryReply
from labfleet.shared.events.resource import (
    Decommission,
    Lifecycle,
    ResourceReply,
    SetMaintenance,
    SetResourceOptions,
)

from . import handlers
from .adapters.accounts import User
from .adapters.commands import ask_ok
from .context import Gateway
from .domain.errors import ApiError
from .domain.history import average_build_times, usage_during
from .models import (
    BuildDetail,
    BuildPublic,
    BuildServerDetail,
    BuildServerPublic,
    MaintenanceEntry,
    MaintenanceOverview,
    MaintenanceSet,
)

#: builds shown on a server's page
SERVER_HISTORY = 50


async def _changed(gw: Gateway, reply: ResourceReply) -> BuildServerPublic:
    assert reply.resource is not None
    gw.hub.forget_resources()
    gw.hub.remember(reply.resource)
    return await handlers.build_server_public(gw, reply.resource)


async def set_maintenance(gw: Gateway, server_id: uuid.UUID, body: MaintenanceSet,
                          user: User) -> BuildServerPublic:
    await handlers.get_build_server(gw, server_id)  # 404 for what is no build server
    reply = await ask_ok(gw.bus, SetMaintenance(
        resource_id=server_id, on=body.on, reason=body.reason, start=body.start, end=body.end,
        requested_by=user.username), ResourceReply)
    return await _changed(gw, reply)


async def set_options(gw: Gateway, server_id: uuid.UUID, pause_on_low_disk: bool | None,
                      user: User) -> BuildServerPublic:
    await handlers.get_build_server(gw, server_id)
    reply = await ask_ok(gw.bus, SetResourceOptions(
        resource_id=server_id, pause_on_low_disk=pause_on_low_disk,
        requested_by=user.username), ResourceReply)
    return await _changed(gw, reply)


async def decommission(gw: Gateway, server_id: uuid.UUID, force: bool, user: User) -> None:
    await handlers.get_build_server(gw, server_id)
    await ask_ok(gw.bus, Decommission(resource_id=server_id, force=force,
                                      requested_by=user.username), ResourceReply, timeout=20.0)
    gw.hub.forget_resources()


async def maintenance_overview(gw: Gateway) -> MaintenanceOverview:
    views = await handlers.load_build_servers(gw)
    now = datetime.now(UTC)
    windows: list[MaintenanceEntry] = []
    for v in views:
        if v.maintenance is None and v.lifecycle != Lifecycle.MAINTENANCE:
            continue
        m = v.maintenance
        try:
            slots = int(v.labels.get("build_slots", "1"))
        except ValueError:
            slots = 1
        windows.append(MaintenanceEntry(
            server_id=v.resource_id, name=v.name, lifecycle=v.lifecycle,
            in_force=v.lifecycle == Lifecycle.MAINTENANCE,
            reason=m.reason if m else "", start=m.start if m else None,
            end=m.end if m else None, set_by=m.set_by if m else "",
            cpu_cores=v.capabilities.cpu_cores if v.capabilities else 0, build_slots=slots))
    windows.sort(key=lambda w: (not w.in_force, w.start or now, w.name))
    now_on = [w for w in windows if w.in_force]
    upcoming = [w for w in windows if not w.in_force]
    return MaintenanceOverview(
        windows=windows, total_servers=len(views),
        total_cores=sum(v.capabilities.cpu_cores for v in views if v.capabilities),
        servers_in_maintenance=len(now_on), cores_in_maintenance=sum(w.cpu_cores for w in now_on),
        upcoming_servers=len(upcoming), upcoming_cores=sum(w.cpu_cores for w in upcoming))


# ---- builds ---------------------------------------------------------------------------


async def pin_build(gw: Gateway, build_id: uuid.UUID, pinned: bool, user: User) -> BuildPublic:
    reply = await ask_ok(gw.bus, PinBuild(build_id=build_id, pinned=pinned,
                                          requested_by=user.username), BuildReply)
    assert reply.build is not None
    return BuildPublic.build(reply.build)


async def tag_build(gw: Gateway, build_id: uuid.UUID, tags: list[str], remove: bool,
                    user: User) -> BuildPublic:
    reply = await ask_ok(gw.bus, TagBuild(build_id=build_id, tags=tags, remove=remove,
                                          requested_by=user.username), BuildReply)
    assert reply.build is not None
    return BuildPublic.build(reply.build)


async def build_detail(gw: Gateway, build_id: uuid.UUID) -> BuildDetail:
    view = await handlers.get_build(gw, build_id)
    detail = BuildDetail(**BuildPublic.build(view).model_dump())
    if view.server_id is None or view.started_at is None:
        return detail
    until = view.finished_at or datetime.now(UTC)
    try:
        history = await ask_ok(gw.bus, GetSampleHistory(
            resource_id=view.server_id, since=view.started_at - timedelta(seconds=1),
            until=until + timedelta(seconds=1), limit=5000), SampleHistoryReply)
        detail.resource_usage = asdict(usage_during(history.samples))
    except ApiError as exc:
        detail.resource_usage_error = ErrorInfo(code=exc.code, message=exc.message,
                                                hint=exc.hint)
    return detail


async def _server_builds(gw: Gateway, server_id: uuid.UUID) -> list[BuildView]:
    reply = await ask_ok(gw.bus, ListBuilds(server_id=server_id, limit=SERVER_HISTORY),
                         BuildListReply)
    return reply.builds


async def _waiting(gw: Gateway) -> list[BuildView]:
    reply = await ask_ok(gw.bus, ListBuilds(active_only=True, limit=1000), BuildListReply)
    return [b for b in reply.builds if b.status == BuildStatus.QUEUED]


async def server_detail(gw: Gateway, server_id: uuid.UUID) -> BuildServerDetail:
    detail = await handlers.build_server_detail(gw, server_id)
    try:
        builds, waiting = await asyncio.gather(_server_builds(gw, server_id), _waiting(gw))
    except ApiError as exc:
        detail.builds_error = ErrorInfo(code=exc.code, message=exc.message, hint=exc.hint)
        return detail
    detail.builds = [BuildPublic.build(b) for b in builds]
    detail.average_build_times = [asdict(a) for a in average_build_times(builds)]
    detail.current_builds = [BuildPublic.build(b) for b in builds
                             if b.status in (BuildStatus.ALLOCATED, BuildStatus.RUNNING)]
    detail.queue_depth = sum(
        1 for b in waiting
        if b.spec.server in (None, "", detail.name, str(detail.id))
        and (not detail.architectures or b.spec.arch in detail.architectures)
        and all(detail.labels.get(k) == v for k, v in b.spec.labels.items()))
    return detail
