"""Bus subscribers: each translates one message into one handler call."""
from __future__ import annotations

from labfleet.shared.bus import Bus, Delivery
from labfleet.shared.events.build import (
    ArtifactListReply,
    BuildAllocated,
    BuildListReply,
    BuildRejected,
    BuildReply,
    BuildRequested,
    CancelBuild,
    GetBuild,
    ListArtifacts,
    ListBuilds,
    PinBuild,
    TagBuild,
)
from labfleet.shared.events.request import RequestQueued

from . import handlers, retention, run_build
from .deps import BuilderDeps


def register(bus: Bus, deps: BuilderDeps) -> None:
    @bus.on_event(BuildRequested, purpose="build-requested")
    async def requested(event: BuildRequested, msg: Delivery) -> None:
        await handlers.build_requested(event, deps)

    @bus.on_event(RequestQueued, purpose="request-queued")
    async def queued(event: RequestQueued, msg: Delivery) -> None:
        await handlers.request_queued(event, deps)

    @bus.on_event(BuildRejected, purpose="build-rejected")
    async def rejected(event: BuildRejected, msg: Delivery) -> None:
        await handlers.build_rejected(event, deps)

    # a build runs for minutes: its own task, acknowledged when it ends (redelivered if
    # this process dies first)
    @bus.on_event(BuildAllocated, purpose="build-allocated", detached=True, batch_size=8)
    async def allocated(event: BuildAllocated, msg: Delivery) -> None:
        await run_build.build_allocated(event, msg, deps)

    @bus.on_command(GetBuild)
    async def get(cmd: GetBuild) -> BuildReply:
        return await handlers.get_build(cmd, deps)

    @bus.on_command(ListBuilds)
    async def list_(cmd: ListBuilds) -> BuildListReply:
        return await handlers.list_builds(cmd, deps)

    @bus.on_command(CancelBuild)
    async def cancel(cmd: CancelBuild) -> BuildReply:
        return await handlers.cancel_build(cmd, deps)

    @bus.on_command(ListArtifacts)
    async def artifacts(cmd: ListArtifacts) -> ArtifactListReply:
        return await handlers.list_artifacts(cmd, deps)

    @bus.on_command(PinBuild)
    async def pin(cmd: PinBuild) -> BuildReply:
        return await retention.pin_build(cmd, deps)

    @bus.on_command(TagBuild)
    async def tag(cmd: TagBuild) -> BuildReply:
        return await retention.tag_build(cmd, deps)
