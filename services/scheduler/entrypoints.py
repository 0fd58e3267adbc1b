"""Bus subscribers: each translates one message into one handler call."""
from __future__ import annotations

from faststream.nats import DeliverPolicy

from labfleet.shared.bus import Bus, Delivery
from labfleet.shared.events.build import (
    BuildFailed,
    BuildFinished,
    BuildRequested,
    BuildStarted,
    BuildSucceeded,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.health import HealthChanged, HostSampled
from labfleet.shared.events.resource import ResourceRegistered, ResourceRemoved, ResourceUpdated

from . import handlers
from .handlers import SchedulerDeps


def register(bus: Bus, deps: SchedulerDeps) -> None:
    @bus.on_command(SubmitBuild)
    async def submit(cmd: SubmitBuild) -> SubmitBuildReply:
        return await handlers.submit_build(cmd, deps)

    @bus.on_event(BuildRequested, purpose="build-requested")
    async def requested(event: BuildRequested, msg: Delivery) -> None:
        await handlers.build_requested(event, deps)

    @bus.on_event(ResourceRegistered, purpose="resource-registered")
    async def registered(event: ResourceRegistered, msg: Delivery) -> None:
        await handlers.resource_changed(event, deps, "resource-registered")

    @bus.on_event(ResourceUpdated, purpose="resource-updated")
    async def updated(event: ResourceUpdated, msg: Delivery) -> None:
        await handlers.resource_changed(event, deps, "resource-updated")

    @bus.on_event(ResourceRemoved, purpose="resource-removed")
    async def removed(event: ResourceRemoved, msg: Delivery) -> None:
        await handlers.resource_removed(event, deps)

    @bus.on_event(HealthChanged, purpose="health")
    async def health(event: HealthChanged, msg: Delivery) -> None:
        await handlers.health_changed(event, deps)

    # only the latest sample per server matters, also for a scheduler seeing the pool anew
    @bus.on_event(HostSampled, purpose="samples", subject="sample.build_server.*",
                  deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    async def sampled(event: HostSampled, msg: Delivery) -> None:
        await handlers.host_sampled(event, deps)

    @bus.on_event(BuildStarted, purpose="build-started")
    async def started(event: BuildStarted, msg: Delivery) -> None:
        await handlers.build_started(event, deps)

    @bus.on_event(BuildSucceeded, purpose="build-succeeded")
    async def succeeded(event: BuildSucceeded, msg: Delivery) -> None:
        await handlers.build_succeeded(event, deps)

    @bus.on_event(BuildFailed, purpose="build-failed")
    async def failed(event: BuildFailed, msg: Delivery) -> None:
        await handlers.build_failed(event, deps)

    @bus.on_event(BuildFinished, purpose="build-finished")
    async def finished(event: BuildFinished, msg: Delivery) -> None:
        await handlers.build_finished(event, deps)
