"""Bus subscribers: each translates one message into one handler call."""
from __future__ import annotations

from labfleet.shared.bus import Bus, Delivery
from labfleet.shared.events.deploy import DeployRequested
from labfleet.shared.events.env import (
    DeployReply,
    EnvAllocated,
    EnvListReply,
    EnvRejected,
    EnvReply,
    EnvRequested,
    GetEnv,
    ListEnvs,
    RedeployEnv,
    ReleaseEnv,
    RollbackEnv,
)
from labfleet.shared.events.request import RequestQueued

from . import handlers
from .deps import DeployerDeps


def register(bus: Bus, deps: DeployerDeps) -> None:
    @bus.on_command(GetEnv, max_workers=4)
    async def get(cmd: GetEnv) -> EnvReply:
        return await handlers.get_env(cmd, deps)

    @bus.on_command(ListEnvs, max_workers=2)
    async def list_(cmd: ListEnvs) -> EnvListReply:
        return await handlers.list_envs(cmd, deps)

    # releasing waits on libvirt over SSH: several at once
    @bus.on_command(ReleaseEnv, max_workers=8)
    async def release(cmd: ReleaseEnv) -> DeployReply:
        return await handlers.release_env(cmd, deps)

    @bus.on_command(RedeployEnv, max_workers=4)
    async def redeploy(cmd: RedeployEnv) -> DeployReply:
        return await handlers.redeploy_env(cmd, deps)

    @bus.on_command(RollbackEnv, max_workers=4)
    async def rollback(cmd: RollbackEnv) -> DeployReply:
        return await handlers.rollback_env(cmd, deps)

    @bus.on_event(EnvRequested, purpose="env-requested")
    async def requested(event: EnvRequested, msg: Delivery) -> None:
        await handlers.env_requested(event, deps)

    @bus.on_event(RequestQueued, purpose="request-queued")
    async def queued(event: RequestQueued, msg: Delivery) -> None:
        await handlers.request_queued(event, deps)

    @bus.on_event(EnvRejected, purpose="env-rejected")
    async def rejected(event: EnvRejected, msg: Delivery) -> None:
        await handlers.env_rejected(event, deps)

    # deployments take seconds to minutes: each in its own task, acked when it ends
    @bus.on_event(EnvAllocated, purpose="env-allocated", detached=True)
    async def allocated(event: EnvAllocated, msg: Delivery) -> None:
        await handlers.env_allocated(event, msg, deps)

    @bus.on_event(DeployRequested, purpose="deploy-requested", detached=True)
    async def deploy_requested(event: DeployRequested, msg: Delivery) -> None:
        await handlers.deploy_requested(event, msg, deps)
