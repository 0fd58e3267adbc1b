"""Environment placement: one plain function per command and event.

``env.cmd.create`` resolves the build's artifacts (asking the builder), then, holding a
row lock on every QEMU host, picks a host, reserves its capacity and emits
``env.requested`` + ``env.allocated`` in the same transaction (outbox), or queues the
request with an estimated wait (``request.queued``).  Anything that frees or adds capacity
(``env.released``, a host registered, back online, below the utilization limit) places
what waits, oldest first.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic_settings import BaseSettings, SettingsConfigDict

from labfleet.shared.bus import Bus
from labfleet.shared.db import Database, Transaction
from labfleet.shared.events.build import ArtifactListReply, BuildReply, GetBuild, ListArtifacts
from labfleet.shared.events.envelope import ErrorInfo, Event
from labfleet.shared.events.env import (
    ArtifactChoiceError,
    CreateEnv,
    CreateEnvReply,
    EnvAllocated,
    EnvHostsReply,
    EnvRejected,
    EnvReleased,
    EnvRequested,
    EnvSpec,
    EnvStatus,
    HostChoice,
    ResolvedArtifacts,
    pick_boot_artifacts,
)
from labfleet.shared.events.health import HealthChanged, HostSampled
from labfleet.shared.events.request import PolicyDecided, RequestQueued
from labfleet.shared.events.resource import (
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceUpdated,
)

from .adapters import env_repository as repo
from .domain.env_placement import (
    EnvDecision,
    EnvOutcome,
    EnvPolicy,
    Holding,
    availability_problems,
    estimated_wait,
    select_qemu_host,
)

log = logging.getLogger(__name__)


class EnvPlacementConfig(BaseSettings):
    """``LABFLEET_SCHEDULER_QEMU_*``, read once at start-up."""

    model_config = SettingsConfigDict(env_prefix="LABFLEET_SCHEDULER_QEMU_", extra="ignore")

    max_utilization_pct: float = 85.0
    builder_timeout_s: float = 10.0


@dataclass
class EnvDeps:
    db: Database
    bus: Bus
    policy: EnvPolicy
    builder_timeout_s: float = 10.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Refused(Exception):
    def __init__(self, error: ErrorInfo, alternatives: tuple[str, ...] = ()) -> None:
        super().__init__(error.message)
        self.error = error
        self.alternatives = alternatives


# ---- artifacts ------------------------------------------------------------------------


async def resolve_artifacts(spec: EnvSpec, deps: EnvDeps) -> ResolvedArtifacts:
    sel = spec.artifacts
    query = ListArtifacts(build_id=sel.build_id, commit=sel.commit, ref=sel.branch,
                          arch=None if sel.build_id else spec.arch,
                          latest=sel.branch is not None, repo_url=sel.repo_url)
    try:
        listed = await deps.bus.request(query, ArtifactListReply, timeout=deps.builder_timeout_s)
        if not listed.ok or listed.build_id is None:
            err = listed.error or ErrorInfo(code="not_found", message="no such build")
            field_name = {"build_id": "artifacts.build_id", "commit": "artifacts.commit",
                          "ref": "artifacts.branch"}.get(err.field or "", "artifacts")
            raise Refused(err.model_copy(update={
                "message": f"{sel.describe()}: {err.message}", "field": field_name}))
        build = await deps.bus.request(GetBuild(build_id=listed.build_id), BuildReply,
                                       timeout=deps.builder_timeout_s)
    except (NoRespondersError, NatsTimeout, TimeoutError) as exc:
        raise Refused(ErrorInfo(
            code="builder_unavailable", field="artifacts",
            message=f"the builder did not answer which artifacts {sel.describe()} has "
                    f"({type(exc).__name__})",
            hint="check that the builder service runs (labfleet health), then try again")
        ) from None
    commit = build.build.commit if build.ok and build.build and build.build.commit else ""
    resolved = ResolvedArtifacts(build_id=listed.build_id, commit=commit,
                                 artifacts=listed.artifacts)
    try:
        pick_boot_artifacts(spec, resolved.artifacts)
    except ArtifactChoiceError as exc:
        raise Refused(ErrorInfo(code="no_boot_artifacts", message=f"{sel.describe()}: {exc}",
                                field=exc.field,
                                hint="name the artifact to boot (kernel_artifact ...)")) from None
    return resolved


# ---- commands -------------------------------------------------------------------------


def _refusal(decision: EnvDecision, spec: EnvSpec) -> Refused | None:
    """What to tell a requester instead of queueing; None when queueing is right."""
    alts = decision.alternatives
    also = f"; these would fit now: {', '.join(alts)}" if alts else ""
    if decision.outcome == EnvOutcome.UNKNOWN_HOST:
        return Refused(ErrorInfo(code="unknown_host", field="host",
                                 message=f"there is no QEMU host {spec.host!r}{also}",
                                 hint="pick a host from the list, or Auto"), alts)
    if decision.outcome == EnvOutcome.NO_CAPABLE_HOST:
        if spec.host is not None:
            return Refused(ErrorInfo(
                code="host_not_capable", field="host",
                message=f"{spec.host} cannot run this environment: "
                        f"{'; '.join(decision.pinned_problems)}{also}",
                hint="pick one of the alternatives, or Auto"), alts)
        return Refused(ErrorInfo(code="no_capable_host", field="arch",
                                 message=decision.reason,
                                 hint="ask for fewer vCPUs or less memory, no KVM, or "
                                      "register a QEMU host that can run it"))
    if decision.outcome == EnvOutcome.WAIT_FOR_CAPACITY and spec.host is not None and alts:
        return Refused(ErrorInfo(
            code="host_lacks_capacity", field="host",
            message=f"{spec.host} cannot take it now: {'; '.join(decision.pinned_problems)}"
                    f"{also}",
            hint="pick one of the alternatives or Auto, or wait for the host"), alts)
    return None


async def create_env(cmd: CreateEnv, deps: EnvDeps) -> CreateEnvReply:
    spec = cmd.spec
    try:
        resolved = await resolve_artifacts(spec, deps)
    except Refused as refused:
        return CreateEnvReply(ok=False, error=refused.error)
    env_id = uuid.uuid4()
    async with deps.db.transaction() as tx:
        await repo.lock_hosts(tx)
        hosts = await repo.load_hosts(tx)
        decision = select_qemu_host(spec, hosts, deps.policy)
        refused = _refusal(decision, spec)
        if refused is not None:
            return CreateEnvReply(ok=False, error=refused.error,
                                  alternatives=list(refused.alternatives))
        pinned = next((h.host_id for h in hosts
                       if spec.host in (h.name, str(h.host_id))), None)
        await repo.enqueue(tx, env_id, spec, resolved, cmd.requested_by, pinned)
        await tx.emit(EnvRequested(env_id=env_id, spec=spec, resolved=resolved,
                                   requested_by=cmd.requested_by, trace=cmd.trace))
        await _record(tx, env_id, decision)
        placed = await place_queued_envs(tx, deps)
    entry = placed.get(env_id)
    if entry is not None and entry[0] == EnvStatus.ALLOCATED:
        return CreateEnvReply(ok=True, env_id=env_id, status=EnvStatus.ALLOCATED,
                              host_name=entry[1], position=0, estimated_wait_s=0.0)
    position, estimate = entry[2:] if entry else (None, None)
    warning = (f"{spec.host} has no room now; the environment waits for it"
               if spec.host else None)
    return CreateEnvReply(ok=True, env_id=env_id, status=EnvStatus.QUEUED, position=position,
                          estimated_wait_s=estimate, warning=warning,
                          alternatives=list(decision.alternatives))


async def list_hosts(deps: EnvDeps) -> EnvHostsReply:
    async with deps.db.transaction() as tx:
        hosts = await repo.load_hosts(tx)
    choices = []
    for h in sorted(hosts, key=lambda h: h.name):
        problems = availability_problems(h, deps.policy)
        choices.append(HostChoice(
            host_id=h.host_id, name=h.name, available=not problems,
            free_vcpus=h.free_vcpus, free_memory_mb=h.free_memory_mb,
            utilization=round(max(h.reserved_vcpus / max(1, h.vcpus),
                                  h.reserved_memory_mb / max(1, h.memory_mb),
                                  *((v / 100) for v in (h.cpu_pct, h.mem_pct) if v is not None)),
                              3),
            kvm=h.kvm_usable, arches=sorted(h.guests), reasons=problems))
    return EnvHostsReply(ok=True, hosts=choices)


# ---- placing what waits ---------------------------------------------------------------


async def _record(tx: Transaction, env_id: uuid.UUID, decision: EnvDecision) -> None:
    await tx.execute(
        "INSERT INTO decisions (request_id, outcome, chosen, reason, candidates) "
        "VALUES ($1, $2, $3, $4, $5)", env_id, decision.outcome.value,
        decision.chosen.name if decision.chosen else None, decision.reason,
        json.dumps([c.as_dict() for c in decision.candidates]))
    await tx.emit(PolicyDecided(request_id=env_id, kind="env",
                                chosen=decision.chosen.name if decision.chosen else None,
                                candidates=[c.as_dict() for c in decision.candidates],
                                reason=decision.reason))


async def place_queued_envs(tx: Transaction, deps: EnvDeps
                            ) -> dict[uuid.UUID, tuple[EnvStatus, str | None, int | None,
                                                       float | None]]:
    """Allocate what fits, oldest first; re-estimate what waits.  Holds the host locks."""
    now = deps.clock()
    hosts = {h.host_id: h for h in await repo.load_hosts(tx)}
    results: dict[uuid.UUID, tuple[EnvStatus, str | None, int | None, float | None]] = {}
    waiting: list[repo.EnvEntry] = []
    for entry in await repo.queued(tx):
        spec = entry.spec
        if entry.pinned_host_id is not None:
            spec = spec.model_copy(update={"host": str(entry.pinned_host_id)})
        decision = select_qemu_host(spec, hosts.values(), deps.policy)
        if decision.outcome != EnvOutcome.PLACED or decision.chosen is None:
            waiting.append(entry)
            continue
        host = decision.chosen
        await repo.mark_allocated(tx, entry.env_id, host.host_id, host.name, now)
        hosts[host.host_id] = host.reserve(entry.spec.vcpus, entry.spec.memory_mb)
        await tx.emit(EnvAllocated(env_id=entry.env_id, host_id=host.host_id,
                                   host_name=host.name, spec=entry.spec,
                                   resolved=entry.resolved, requested_by=entry.requested_by,
                                   reason=decision.reason))
        if entry.position is not None:  # it waited: log why it goes there now
            await _record(tx, entry.env_id, decision)
        results[entry.env_id] = (EnvStatus.ALLOCATED, host.name, 0, 0.0)
        log.info("environment placed", extra={"env_id": str(entry.env_id), "host": host.name})

    holdings = [Holding(e.host_id, e.spec.vcpus, e.spec.memory_mb,
                        max(0.0, e.spec.lease_s - ((now - e.allocated_at).total_seconds()
                                                   if e.allocated_at else 0.0)))
                for e in await repo.allocated(tx) if e.host_id is not None]
    for index, entry in enumerate(waiting):
        pool = [hosts[entry.pinned_host_id]] if entry.pinned_host_id in hosts else list(
            hosts.values())
        estimate = estimated_wait(entry.spec, pool, holdings,
                                  [e.spec for e in waiting[:index]], deps.policy)
        position = index + 1
        results[entry.env_id] = (EnvStatus.QUEUED, None, position, estimate)
        if entry.position != position or _moved(entry.estimated_wait_s, estimate):
            await repo.set_wait(tx, entry.env_id, position, estimate)
            await tx.emit(RequestQueued(
                request_id=entry.env_id, kind="env", position=position,
                estimated_start_s=estimate,
                reason="no QEMU host has room now" + (
                    "" if estimate is not None else "; no capable host is available, "
                                                     "so no estimate")))
    return results


def _moved(before: float | None, after: float | None) -> bool:
    if before is None or after is None:
        return before != after
    return abs(before - after) > max(10.0, 0.1 * before)


@asynccontextmanager
async def _hosts_change(deps: EnvDeps, consumer: str, event: Event
                        ) -> AsyncIterator[Transaction | None]:
    async with deps.db.consume(consumer, event) as tx:
        if tx is not None:
            await repo.lock_hosts(tx)
        yield tx


# ---- events ---------------------------------------------------------------------------


async def env_released(event: EnvReleased, deps: EnvDeps) -> None:
    async with _hosts_change(deps, "env-released", event) as tx:
        if tx is None:
            return
        if await repo.mark_ended(tx, event.env_id, "released", event.occurred_at):
            await place_queued_envs(tx, deps)


async def resource_changed(event: ResourceRegistered | ResourceUpdated, deps: EnvDeps,
                           consumer: str) -> None:
    if event.resource.kind != ResourceKind.QEMU_HOST:
        return
    async with _hosts_change(deps, consumer, event) as tx:
        if tx is not None and await repo.upsert_host(tx, event.resource, event.occurred_at):
            await place_queued_envs(tx, deps)


async def resource_removed(event: ResourceRemoved, deps: EnvDeps) -> None:
    if event.kind != ResourceKind.QEMU_HOST:
        return
    async with _hosts_change(deps, "env-resource-removed", event) as tx:
        if tx is None:
            return
        for env_id in await repo.pinned_to(tx, event.resource_id):
            await repo.mark_ended(tx, env_id, "rejected", event.occurred_at)
            await tx.emit(EnvRejected(env_id=env_id, error=ErrorInfo(
                code="host_removed", field="host",
                message="the QEMU host this environment waited for was removed",
                hint="create it again with another host or Auto")))
        await repo.remove_host(tx, event.resource_id)
        await place_queued_envs(tx, deps)


async def health_changed(event: HealthChanged, deps: EnvDeps) -> None:
    if event.kind != ResourceKind.QEMU_HOST:
        return
    async with _hosts_change(deps, "env-health", event) as tx:
        if tx is not None and await repo.set_health(tx, event.resource_id, event.status,
                                                    event.reason or "; ".join(event.warnings),
                                                    event.occurred_at):
            await place_queued_envs(tx, deps)


async def host_sampled(event: HostSampled, deps: EnvDeps) -> None:
    """Keep the host's use; a host dropping below the limit may take what waits."""
    sample = event.sample
    if sample.kind != ResourceKind.QEMU_HOST:
        return
    async with deps.db.transaction() as tx:
        if await repo.set_sample(tx, sample) and await tx.fetchval(
                "SELECT true FROM env_requests WHERE status = 'queued' LIMIT 1"):
            await repo.lock_hosts(tx)
            await place_queued_envs(tx, deps)
