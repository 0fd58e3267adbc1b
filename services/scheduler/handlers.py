"""One plain function per command and event; dependencies come in as arguments.

Event handlers that write run inside ``db.consume`` (a redelivered event has no second
effect) and take the pool lock before reading what a placement depends on.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from labfleet.shared.db import Database, Transaction
from labfleet.shared.events.build import (
    BuildFailed,
    BuildFinished,
    BuildRejected,
    BuildRequested,
    BuildSpec,
    BuildStarted,
    BuildSucceeded,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.envelope import ErrorInfo, Event
from labfleet.shared.events.health import HealthChanged, HostSampled
from labfleet.shared.events.resource import (
    Lifecycle,
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceUpdated,
)

from .adapters import repository as repo
from .allocation import lock_pool, place_queued
from .config import SchedulerConfig
from .domain.placement import PlacementPolicy, select_build_server
from .domain.repo_urls import allowed_schemes, url_refusal
from .domain.servers import USABLE_HEALTH
from .domain.submission import Rejection, check_submission

log = logging.getLogger(__name__)


@dataclass
class SchedulerDeps:
    db: Database
    config: SchedulerConfig
    policy: PlacementPolicy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    #: repository URL schemes builds may fetch (LABFLEET_BUILD_ALLOWED_URL_SCHEMES)
    allowed_url_schemes: frozenset[str] = field(
        default_factory=lambda: allowed_schemes(None))


@asynccontextmanager
async def _pool_change(deps: SchedulerDeps, consumer: str, event: Event
                       ) -> AsyncIterator[Transaction | None]:
    """An idempotent unit of work holding the pool lock (None: already handled)."""
    async with deps.db.consume(consumer, event) as tx:
        if tx is not None:
            await lock_pool(tx)
        yield tx


async def _replan(tx: Transaction, deps: SchedulerDeps) -> None:
    await place_queued(tx, deps.config, deps.policy, deps.clock())


# ---- commands ---------------------------------------------------------------------------


async def submit_build(cmd: SubmitBuild, deps: SchedulerDeps) -> SubmitBuildReply:
    spec = cmd.spec
    refusal = url_refusal(spec.repo_url, deps.allowed_url_schemes)
    if refusal is not None:
        return SubmitBuildReply(ok=False, error=refusal)
    async with deps.db.transaction() as tx:
        await lock_pool(tx)
        now = deps.clock()
        pool = await repo.load_pool(tx, deps.config.build_slots)
        decision = select_build_server(spec, pool, now, policy=deps.policy)
        try:
            pinned = check_submission(spec, pool, decision, deps.policy)
        except Rejection as rejected:
            return SubmitBuildReply(ok=False, error=rejected.error,
                                    alternatives=rejected.alternatives)
        build_id = uuid.uuid4()
        await repo.enqueue(tx, build_id, spec, cmd.requested_by,
                           pinned.server_id if pinned else None)
        await tx.emit(BuildRequested(build_id=build_id, spec=spec, requested_by=cmd.requested_by,
                                     trace=cmd.trace))
        placed = (await place_queued(tx, deps.config, deps.policy, now))[build_id]
    log.info("build submitted", extra={"build_id": str(build_id), "position": placed.position,
                                       "server": placed.decision.chosen.name
                                       if placed.decision.chosen else None})
    return SubmitBuildReply(ok=True, build_id=build_id, position=placed.position,
                            estimated_start_s=placed.estimated_start_s,
                            alternatives=list(decision.alternatives))


# ---- requests ---------------------------------------------------------------------------


async def build_requested(event: BuildRequested, deps: SchedulerDeps) -> None:
    """A build asked for on the bus (a pipeline, or our own submit)."""
    async with _pool_change(deps, "build-requested", event) as tx:
        if tx is None or await repo.get_entry(tx, event.build_id) is not None:
            return  # submitted through build.cmd.submit: queued and placed already
        pool = await repo.load_pool(tx, deps.config.build_slots)
        decision = select_build_server(event.spec, pool, deps.clock(), policy=deps.policy)
        try:
            pinned = check_submission(event.spec, pool, decision, deps.policy)
        except Rejection as rejected:
            error = rejected.error.model_copy(
                update={"details": {**rejected.error.details,
                                    "alternatives": rejected.alternatives}})
            await tx.emit(BuildRejected(build_id=event.build_id, error=error))
            return
        await repo.enqueue(tx, event.build_id, event.spec, event.requested_by,
                           pinned.server_id if pinned else None)
        await _replan(tx, deps)


# ---- the pool ---------------------------------------------------------------------------


async def _requeue_unstarted(tx: Transaction, server_id: uuid.UUID, why: str) -> None:
    """Builds given to a server that can no longer take them go back to the queue."""
    for build_id in await repo.allocated_not_started(tx, server_id):
        log.info("build back to the queue", extra={"build_id": str(build_id), "why": why})
        await repo.requeue(tx, build_id)


async def resource_changed(event: ResourceRegistered | ResourceUpdated, deps: SchedulerDeps,
                           consumer: str) -> None:
    view = event.resource
    if view.kind != ResourceKind.BUILD_SERVER:
        return
    async with _pool_change(deps, consumer, event) as tx:
        if tx is None:
            return
        previous, applied = await repo.upsert_server(tx, view, event.occurred_at)
        if not applied:
            return
        if view.lifecycle != Lifecycle.ACTIVE and previous in (None, Lifecycle.ACTIVE):
            await _requeue_unstarted(tx, view.resource_id, f"server {view.lifecycle}")
        await _replan(tx, deps)


async def resource_removed(event: ResourceRemoved, deps: SchedulerDeps) -> None:
    if event.kind != ResourceKind.BUILD_SERVER:
        return
    async with _pool_change(deps, "resource-removed", event) as tx:
        if tx is None:
            return
        await _requeue_unstarted(tx, event.resource_id, "server removed")
        for build_id in await repo.pinned_to(tx, event.resource_id):
            await repo.mark_finished(tx, build_id, deps.clock())
            await tx.emit(BuildRejected(build_id=build_id, error=ErrorInfo(
                code="server_removed", field="server",
                message="the build server this build was pinned to was removed from the pool",
                hint="submit it again with another server or Auto")))
        await repo.remove_server(tx, event.resource_id)
        await _replan(tx, deps)


async def health_changed(event: HealthChanged, deps: SchedulerDeps) -> None:
    if event.kind != ResourceKind.BUILD_SERVER:
        return
    async with _pool_change(deps, "health", event) as tx:
        if tx is None:
            return
        if not await repo.set_health(tx, event.resource_id, event.status, event.reason,
                                     event.occurred_at):
            return  # an older change arriving late
        if event.status not in USABLE_HEALTH:
            await _requeue_unstarted(tx, event.resource_id, f"server {event.status}")
        await _replan(tx, deps)


async def host_sampled(event: HostSampled, deps: SchedulerDeps) -> None:
    """Keep the load; replan only when the disk crosses the minimum upwards."""
    sample = event.sample
    if sample.kind != ResourceKind.BUILD_SERVER:
        return
    async with deps.db.transaction() as tx:
        before = await repo.set_sample(tx, sample)
        levels = [deps.policy.min_free_disk_gb]
        if deps.policy.disk_warning_gb is not None:
            levels.append(deps.policy.disk_warning_gb)
        if any((before is None or before < level) and sample.disk_free_gb >= level
               for level in levels):
            await lock_pool(tx)
            await _replan(tx, deps)


# ---- builds -----------------------------------------------------------------------------


async def build_started(event: BuildStarted, deps: SchedulerDeps) -> None:
    async with deps.db.consume("build-started", event) as tx:
        if tx is not None:
            await repo.mark_running(tx, event.build_id, event.server_id, event.occurred_at)


async def build_succeeded(event: BuildSucceeded, deps: SchedulerDeps) -> None:
    async with deps.db.consume("build-succeeded", event) as tx:
        if tx is None:
            return
        row = await tx.fetchrow("SELECT spec FROM build_queue WHERE build_id = $1",
                                event.build_id)
        if row is None:
            return  # not one of ours (or long gone)
        spec = BuildSpec.model_validate_json(row["spec"])
        await repo.record_history(tx, event.build_id, event.server_id, spec, event.duration_s,
                                  event.occurred_at)


async def build_failed(event: BuildFailed, deps: SchedulerDeps) -> None:
    """A lost server: place the build again elsewhere, up to the attempt bound."""
    if not event.retryable:
        return  # terminal; build.finished frees the slot
    async with _pool_change(deps, "build-failed", event) as tx:
        if tx is None:
            return
        entry = await repo.get_entry(tx, event.build_id)
        if entry is None or entry.status not in ("allocated", "running") or (
                event.server_id is not None and entry.server_id != event.server_id):
            return  # about an allocation that was already replaced
        if entry.attempt >= deps.config.max_build_attempts:
            await repo.mark_finished(tx, entry.build_id, deps.clock())
            await tx.emit(BuildRejected(build_id=entry.build_id, error=ErrorInfo(
                code="retries_exhausted",
                message=f"the build lost its server on all {entry.attempt} attempts; "
                        f"last: {event.error.message}",
                hint=event.error.hint or "check the build servers' health",
                details={"last_error": event.error.model_dump()})))
        else:
            await repo.requeue(tx, entry.build_id, avoid=entry.server_id, error=event.error)
        await _replan(tx, deps)


async def build_finished(event: BuildFinished, deps: SchedulerDeps) -> None:
    async with _pool_change(deps, "build-finished", event) as tx:
        if tx is None:
            return
        await repo.mark_finished(tx, event.build_id, event.occurred_at)
        await _replan(tx, deps)
