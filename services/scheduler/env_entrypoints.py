"""Bus subscribers of environment placement: each translates one message into one call.

Consumers are named ``scheduler-env-*``: the build pool's consumers see the same resource
and health events, each side keeps its own projection.
"""
from __future__ import annotations

from faststream.nats import DeliverPolicy

from labfleet.shared.bus import Bus, Delivery
from labfleet.shared.events.env import CreateEnv, CreateEnvReply, EnvHostsReply, EnvReleased, ListEnvHosts
from labfleet.shared.events.health import HealthChanged, HostSampled
from labfleet.shared.events.resource import ResourceRegistered, ResourceRemoved, ResourceUpdated

from . import env_handlers as handlers
from .env_handlers import EnvDeps


def register_env(bus: Bus, deps: EnvDeps) -> None:
    # artifact resolution waits on the builder: answer several requests at once
    @bus.on_command(CreateEnv, max_workers=8)
    async def create(cmd: CreateEnv) -> CreateEnvReply:
        return await handlers.create_env(cmd, deps)

    @bus.on_command(ListEnvHosts, max_workers=4)
    async def hosts(cmd: ListEnvHosts) -> EnvHostsReply:
        return await handlers.list_hosts(deps)

    @bus.on_event(EnvReleased, purpose="env-released")
    async def released(event: EnvReleased, msg: Delivery) -> None:
        await handlers.env_released(event, deps)

    @bus.on_event(ResourceRegistered, purpose="env-resource-registered")
    async def registered(event: ResourceRegistered, msg: Delivery) -> None:
        await handlers.resource_changed(event, deps, "env-resource-registered")

    @bus.on_event(ResourceUpdated, purpose="env-resource-updated")
    async def updated(event: ResourceUpdated, msg: Delivery) -> None:
        await handlers.resource_changed(event, deps, "env-resource-updated")

    @bus.on_event(ResourceRemoved, purpose="env-resource-removed")
    async def removed(event: ResourceRemoved, msg: Delivery) -> None:
        await handlers.resource_removed(event, deps)

    @bus.on_event(HealthChanged, purpose="env-health")
    async def health(event: HealthChanged, msg: Delivery) -> None:
        await handlers.health_changed(event, deps)

    # only the latest sample per host matters, also for a scheduler seeing the pool anew
    @bus.on_event(HostSampled, purpose="env-samples", subject="sample.qemu_host.*",
                  deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    async def sampled(event: HostSampled, msg: Delivery) -> None:
        await handlers.host_sampled(event, deps)
