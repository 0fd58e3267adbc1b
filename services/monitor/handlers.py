"""One function per thing the monitor reacts to: a resource event, a poll, a history request."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from labfleet.shared.bus import Bus
from labfleet.shared.db import Database
from labfleet.shared.events.health import (
    GetSampleHistory,
    HealthChanged,
    HealthRecord,
    HostSample,
    HostSampled,
    SampleHistoryReply,
)
from labfleet.shared.events.resource import ResourceRegistered, ResourceRemoved, ResourceUpdated

from .adapters.health_store import HealthRepository
from .adapters.history import SampleHistory
from .adapters.host_poll import HostPoll
from .adapters.libvirt_vms import LibvirtSessions
from .adapters.projection import POLLED_KINDS, PollTarget, ResourceProjection
from .adapters.state_kv import CurrentState
from .domain.health import (
    HealthPolicy,
    HealthState,
    PollOutcome,
    PollSucceeded,
    judge,
    worth_saving,
)
from .polling import Poller

log = logging.getLogger(__name__)


@dataclass
class MonitorDeps:
    bus: Bus
    db: Database
    projection: ResourceProjection
    history: SampleHistory
    health: HealthRepository
    policy: HealthPolicy
    poller: Poller | None = None
    #: opened at start (needs the NATS connection)
    current: CurrentState | None = None
    #: the last judged state of every watched host
    states: dict[uuid.UUID, HealthState] = field(default_factory=dict)
    #: QEMU hosts' libvirt connections and the SSH pool (the detail page asks them)
    vms: LibvirtSessions | None = None
    host_poll: HostPoll | None = None


def sample_subject(sample: HostSample) -> str:
    return HostSampled.subject.format(kind=sample.kind.value, resource_id=sample.resource_id)


def health_record(target: PollTarget, state: HealthState) -> HealthRecord:
    return HealthRecord(resource_id=target.resource_id, kind=target.kind, status=state.status,
                        reason=state.reason, since=state.since, last_seen=state.last_seen,
                        warnings=list(state.warnings),
                        consecutive_failures=state.consecutive_failures,
                        last_sample=state.last_sample)


# ---- the projection -----------------------------------------------------------------


async def apply_resource_event(event: ResourceRegistered | ResourceUpdated | ResourceRemoved,
                               deps: MonitorDeps) -> None:
    """Keep the projection (idempotently), then start or stop polling accordingly."""
    assert deps.poller is not None
    watch: PollTarget | None = None
    async with deps.db.consume("resources", event) as tx:
        if tx is None:
            return  # handled before: a redelivery
        if isinstance(event, ResourceRemoved):
            await deps.projection.remove(tx, event.resource_id, event.kind, event.occurred_at)
            await deps.health.delete(tx, event.resource_id)
        elif event.resource.kind in POLLED_KINDS:
            target = PollTarget.from_view(event.resource)
            if await deps.projection.upsert(tx, target, event.occurred_at):
                watch = target
    if isinstance(event, ResourceRemoved):
        await deps.poller.unwatch(event.resource_id)
        deps.states.pop(event.resource_id, None)
        if deps.current is not None:
            await deps.current.forget(event.resource_id)
        await deps.history.forget(event.resource_id)
        log.info("stopped watching a removed resource", extra={"resource_id": str(event.resource_id)})
    elif watch is not None:
        deps.poller.watch(watch)
        log.info("watching", extra={"resource_id": str(watch.resource_id), "host": watch.address})


# ---- polls --------------------------------------------------------------------------


async def record_poll(target: PollTarget, outcome: PollOutcome, deps: MonitorDeps) -> None:
    """Publish the sample, judge health, announce a transition, refresh the KV state."""
    assert deps.current is not None
    old = deps.states.get(target.resource_id, HealthState())
    new = judge(old, outcome, deps.policy, in_maintenance=target.in_maintenance)
    if isinstance(outcome, PollSucceeded):
        sample = outcome.sample
        deps.history.add(sample)
        try:
            await deps.bus.publish(HostSampled(sample=sample), subject=sample_subject(sample))
            await deps.current.put_sample(sample)
        except Exception as exc:  # noqa: BLE001 - the next poll publishes again; judge health now
            log.warning("publishing a sample failed", extra={
                "resource_id": str(target.resource_id), "error": f"{type(exc).__name__}: {exc}"})
    if new.status is not old.status:
        # the row and the event commit together: a restart never re-announces it
        async with deps.db.transaction() as tx:
            await deps.health.save(tx, target.resource_id, target.kind, new)
            await tx.emit(HealthChanged(
                resource_id=target.resource_id, kind=target.kind, status=new.status,
                previous=old.status, reason=new.reason, last_seen=new.last_seen,
                warnings=list(new.warnings)))
        log.info("health changed", extra={"resource_id": str(target.resource_id),
                                           "host": target.address, "status": new.status.value,
                                           "previous": old.status.value, "reason": new.reason})
    deps.states[target.resource_id] = new
    if new.status is not old.status or worth_saving(old, new):
        await deps.current.put_health(health_record(target, new))


# ---- commands -----------------------------------------------------------------------


async def sample_history(cmd: GetSampleHistory, deps: MonitorDeps) -> SampleHistoryReply:
    if cmd.bucket_s:
        samples = await deps.history.averaged(cmd.resource_id, cmd.since, cmd.until,
                                              cmd.bucket_s, cmd.limit)
    else:
        samples = await deps.history.between(cmd.resource_id, cmd.since, cmd.until, cmd.limit)
    return SampleHistoryReply(ok=True, samples=samples)
