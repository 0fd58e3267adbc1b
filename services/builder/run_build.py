"""The handler of ``build.allocated``: plan, recover, run one attempt, record the outcome.

The message stays unacknowledged while the build runs (a detached consumer; the
heartbeat calls ``in_progress``).  If this process dies, JetStream redelivers it and
:func:`~.domain.job.plan_allocation` sees an attempt in progress that nobody runs: its
remote process group is killed through the pid file, it is recorded as interrupted, and
the next attempt starts.  Outcomes are written with their events in one transaction
(outbox), and only by the attempt that is still current, so nothing is reported twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime

from labfleet.shared.bus import Delivery
from labfleet.shared.events.build import (
    ArtifactStored,
    BuildAllocated,
    BuildCancelled,
    BuildFailed,
    BuildFinished,
    BuildPhase,
    BuildProgress,
    BuildStarted,
    BuildStatus,
    BuildSucceeded,
)
from labfleet.shared.events.resource import TOOLCHAIN_PREFIX, Arch, ResourceView
from labfleet.shared.ssh import RemoteCommandFailed

from .adapters import repository as repo
from .adapters.inventory import CredentialsUnavailable, ServerAccess, server_access
from .adapters.log_stream import BuildLog
from .adapters.remote import BuildHost
from .attempt import AttemptResult, BuildAttempt, Interrupted
from .deps import BuilderDeps
from .domain import remote_plan as plan
from .domain.errors import BuildError
from .domain.job import Action, Attempt, AttemptOutcome, Plan, plan_allocation

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def toolchain_prefix(view: ResourceView, arch: Arch) -> str:
    """The server's own prefix for the architecture (an arm64 host builds arm64 natively)."""
    caps = view.capabilities
    for t in caps.toolchains if caps else []:
        if t.arch == arch:
            return t.prefix
    return TOOLCHAIN_PREFIX[arch]


async def build_allocated(event: BuildAllocated, msg: Delivery, deps: BuilderDeps) -> None:
    build_id = event.build_id
    async with deps.db.transaction() as tx:
        record = await repo.lock_job(tx, build_id)
        if record is None:  # the allocation overtook build.requested
            await repo.insert_job(tx, build_id, event.spec, "", event.occurred_at)
            record = await repo.lock_job(tx, build_id)
            assert record is not None
        decided = plan_allocation(record.job, event.attempt, running_here=build_id in deps.active,
                                  max_attempts=deps.config.max_attempts)
        if decided.action in (Action.RUN, Action.RECOVER) and event.attempt > record.job.allocation:
            await repo.update_job(tx, build_id, allocation=event.attempt,
                                  status=BuildStatus.ALLOCATED, server_id=event.server_id,
                                  server_name=event.server_name, position=None,
                                  estimated_start_s=None)
    if decided.action == Action.IGNORE:
        log.info("allocation ignored", extra={"build_id": str(build_id), "why": decided.reason})
        # redelivered while this process still runs it: hold the message until that run
        # ends, so a crash meanwhile still finds it unacknowledged
        while build_id in deps.active:
            await asyncio.sleep(deps.config.heartbeat_s)
            await msg.in_progress()
        return
    if decided.previous is not None:
        await _stop_previous(decided, deps, event)
    if decided.action == Action.CANCEL:
        await finish_cancelled(deps, build_id, None, "cancelled before it ran")
        return
    if decided.action == Action.GIVE_UP:
        await _finish_failed(deps, build_id, None, BuildError("interrupted", decided.reason,
                             hint="the builder kept stopping during this build; check its logs"),
                             server_id=event.server_id, attempt=len(record.job.attempts))
        return
    await _run_attempt(event, msg, deps, decided.attempt)


async def _stop_previous(decided: Plan, deps: BuilderDeps, event: BuildAllocated) -> None:
    """Kill the remote processes of an attempt nobody runs any more, and close it."""
    previous = decided.previous
    assert previous is not None
    outcome = {Action.CANCEL: AttemptOutcome.CANCELLED}.get(
        decided.action,
        AttemptOutcome.INTERRUPTED if previous.allocation == event.attempt
        else AttemptOutcome.SUPERSEDED)
    if previous.build_dir:
        try:
            access = await server_access(deps.bus, previous.server_id)
            host = BuildHost(deps.ssh, access, command_timeout=deps.settings.ssh_command_timeout_s)
            killed = await host.kill(previous.build_dir)
            log.info("previous attempt stopped", extra={
                "build_id": str(event.build_id), "attempt": previous.attempt, "killed": killed})
        except (BuildError, CredentialsUnavailable, RemoteCommandFailed) as exc:
            # the next attempt starts clean (its build directory is recreated); an
            # unreachable server fails that attempt as "lost" on its own
            log.warning("could not stop the previous attempt", extra={
                "build_id": str(event.build_id), "attempt": previous.attempt, "error": str(exc)})
    async with deps.db.transaction() as tx:
        await repo.end_attempt(tx, event.build_id, previous.attempt, outcome, now(),
                               error=None)
    if outcome == AttemptOutcome.INTERRUPTED:
        log_ = await BuildLog(deps.bus.js, event.build_id, previous.attempt).open()
        await log_.note(f"attempt {previous.attempt} was interrupted (the builder stopped); "
                        "its processes on the server were killed")


async def _run_attempt(event: BuildAllocated, msg: Delivery, deps: BuilderDeps,
                       number: int) -> None:
    build_id = event.build_id
    try:
        access = await server_access(deps.bus, event.server_id)
    except CredentialsUnavailable as exc:
        if msg.delivery < deps.settings.max_deliver:
            raise  # redelivered with back-off: inventory may be restarting
        await _finish_failed(deps, build_id, None, BuildError(
            "credentials_unavailable", str(exc), hint="check that inventory is running"),
            server_id=event.server_id, attempt=number - 1)
        return
    except BuildError as exc:
        await _finish_lost_before_start(deps, event, exc)
        return

    async with deps.db.transaction() as tx:
        await repo.add_attempt(tx, build_id, Attempt(
            attempt=number, allocation=event.attempt, server_id=event.server_id,
            server_name=event.server_name, started_at=now(), instance=deps.instance))
    deps.active[build_id] = number
    buildlog = await BuildLog(deps.bus.js, build_id, number).open()
    heartbeat = asyncio.create_task(_heartbeat(msg, deps, build_id, number, access),
                                    name=f"heartbeat-{build_id}")
    host = BuildHost(deps.ssh, access, command_timeout=deps.settings.ssh_command_timeout_s)
    ws: plan.Workspace | None = None
    finished = False  # a terminal outcome: the build directory may go
    try:
        ws = plan.Workspace(await host.work_root(), build_id)
        await host.run(plan.prepare(ws))
        async with deps.db.transaction() as tx:
            await repo.set_build_dir(tx, build_id, number, ws.build_dir)
            await repo.update_job(tx, build_id, status=BuildStatus.RUNNING,
                                  server_id=event.server_id, server_name=event.server_name,
                                  phase=BuildPhase.FETCH, error=None)
            await tx.execute("UPDATE builds SET started_at = COALESCE(started_at, now()) "
                             "WHERE build_id = $1", build_id)
            await tx.emit(BuildStarted(build_id=build_id, server_id=event.server_id,
                                       attempt=number))
        await buildlog.note(f"attempt {number} on {access.view.name} in {ws.build_dir}")
        attempt = BuildAttempt(
            build_id=build_id, number=number, spec=event.spec, host=host, ws=ws, log=buildlog,
            store=deps.store, toolchain_prefix=toolchain_prefix(access.view, event.spec.arch),
            jobs=await host.cpu_cores(),
            on_phase=lambda phase: _progress(deps, build_id, number, phase),
            on_percent=lambda phase, percent: _progress(deps, build_id, number, phase, percent),
            histories=deps.histories, server_name=access.view.name,
            guard=lambda: _guard(deps, build_id, number))
        result = await attempt.run()
        await _finish_succeeded(deps, event, number, result, buildlog)
        finished = True
    except Interrupted as stop:
        if stop.why == "cancelled":
            await finish_cancelled(deps, build_id, number, "cancelled while running",
                                   buildlog=buildlog)
            finished = True
        else:  # moved to another allocation, which may use this very directory
            await _close(deps, build_id, number, AttemptOutcome.SUPERSEDED)
    except BuildError as exc:
        if exc.retryable:
            await _finish_lost(deps, event, number, exc, buildlog)
        else:
            await _finish_failed(deps, build_id, number, exc, server_id=event.server_id,
                                 attempt=number, buildlog=buildlog)
            finished = True
    except RemoteCommandFailed as exc:
        await _finish_failed(deps, build_id, number, BuildError(
            "remote_command_failed", exc.message, hint="check the build server's tools "
            "(git, make, sha256sum, setsid, flock, tail)"), server_id=event.server_id,
            attempt=number, buildlog=buildlog)
        finished = True
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        deps.active.pop(build_id, None)
    if finished and ws is not None and not deps.config.keep_build_dirs:
        await _cleanup(host, ws, event.spec.repo_url, deps.config.keep_trees)


async def _cleanup(host: BuildHost, ws: plan.Workspace, url: str, keep_trees: int) -> None:
    try:
        await host.run(plan.cleanup(ws, url, keep_trees))
    except (BuildError, RemoteCommandFailed) as exc:
        log.warning("build directory not removed", extra={"dir": ws.build_dir, "error": str(exc)})


# ---- while it runs ----------------------------------------------------------------------


async def _progress(deps: BuilderDeps, build_id: uuid.UUID, number: int,
                    phase: BuildPhase, percent: float | None = None) -> None:
    async with deps.db.transaction() as tx:
        await repo.update_job(tx, build_id, phase=phase)
        await tx.emit(BuildProgress(build_id=build_id, phase=phase, percent=percent))


async def _guard(deps: BuilderDeps, build_id: uuid.UUID, number: int) -> None:
    row = await deps.db.fetchrow(
        "SELECT b.cancel_requested, b.allocation, a.allocation AS mine, a.outcome "
        "FROM builds b JOIN attempts a USING (build_id) WHERE build_id = $1 AND a.attempt = $2",
        build_id, number)
    if row is None or row["outcome"] is not None or row["allocation"] != row["mine"]:
        raise Interrupted("superseded")
    if row["cancel_requested"]:
        raise Interrupted("cancelled")


async def _heartbeat(msg: Delivery, deps: BuilderDeps, build_id: uuid.UUID, number: int,
                     access: ServerAccess) -> None:
    """Keep the message ours; stop the remote step when the build is cancelled or moved."""
    killed = False
    while True:
        await asyncio.sleep(deps.config.heartbeat_s)
        try:
            await msg.in_progress()
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            log.warning("in_progress failed", extra={"build_id": str(build_id), "error": str(exc)})
        if killed:
            continue
        try:
            await _guard(deps, build_id, number)
        except Interrupted:
            build_dir = await deps.db.fetchval(
                "SELECT build_dir FROM attempts WHERE build_id = $1 AND attempt = $2",
                build_id, number)
            if build_dir:
                host = BuildHost(deps.ssh, access,
                                 command_timeout=deps.settings.ssh_command_timeout_s)
                with contextlib.suppress(BuildError, RemoteCommandFailed):
                    await host.kill(build_dir)
            killed = True


# ---- outcomes ---------------------------------------------------------------------------


async def _close(deps: BuilderDeps, build_id: uuid.UUID, number: int,
                 outcome: AttemptOutcome) -> None:
    async with deps.db.transaction() as tx:
        await repo.end_attempt(tx, build_id, number, outcome, now())


async def _current(tx: object, deps: BuilderDeps, build_id: uuid.UUID,
                   number: int | None) -> bool:
    """Lock the job; whether this attempt may still report (not closed, not replaced)."""
    record = await repo.lock_job(tx, build_id)  # type: ignore[arg-type]
    if record is None or record.job.terminal:
        return False
    if number is None:
        return True
    mine = next((a for a in record.job.attempts if a.attempt == number), None)
    return mine is not None and mine.in_progress and mine.allocation == record.job.allocation


async def _finish_succeeded(deps: BuilderDeps, event: BuildAllocated, number: int,
                            result: AttemptResult, buildlog: BuildLog) -> None:
    build_id, at = event.build_id, now()
    async with deps.db.transaction() as tx:
        if not await _current(tx, deps, build_id, number):
            return
        await repo.end_attempt(tx, build_id, number, AttemptOutcome.SUCCEEDED, at)
        await repo.add_artifacts(tx, build_id, result.artifacts)
        await repo.update_job(tx, build_id, status=BuildStatus.SUCCEEDED, phase=None,
                              commit=result.commit, finished_at=at,
                              duration_s=result.duration_s, error=None)
        for artifact in result.artifacts:
            await tx.emit(ArtifactStored(build_id=build_id, artifact=artifact,
                                         commit=result.commit, arch=event.spec.arch,
                                         ref=event.spec.ref))
        await tx.emit(BuildSucceeded(build_id=build_id, server_id=event.server_id,
                                     commit=result.commit, duration_s=result.duration_s,
                                     artifacts=result.artifacts, attempt=number,
                                     toolchain=result.toolchain))
        await tx.emit(BuildFinished(build_id=build_id, server_id=event.server_id,
                                    status=BuildStatus.SUCCEEDED))
    await buildlog.close(f"build succeeded in {result.duration_s:.1f}s "
                         f"({len(result.artifacts)} artifact(s))")


async def _finish_failed(deps: BuilderDeps, build_id: uuid.UUID, number: int | None,
                         error: BuildError, *, server_id: uuid.UUID | None, attempt: int,
                         buildlog: BuildLog | None = None) -> None:
    at = now()
    async with deps.db.transaction() as tx:
        if not await _current(tx, deps, build_id, number):
            return
        if number is not None:
            await repo.end_attempt(tx, build_id, number, AttemptOutcome.FAILED, at, error.info())
        await repo.update_job(tx, build_id, status=BuildStatus.FAILED, finished_at=at,
                              error=error.info())
        await tx.emit(BuildFailed(build_id=build_id, server_id=server_id, error=error.info(),
                                  attempt=max(1, attempt), retryable=False))
        await tx.emit(BuildFinished(build_id=build_id, server_id=server_id,
                                    status=BuildStatus.FAILED))
    buildlog = buildlog or await BuildLog(deps.bus.js, build_id, max(1, attempt)).open()
    await buildlog.close(f"build failed: {error.code}: {error.message}")


async def _finish_lost(deps: BuilderDeps, event: BuildAllocated, number: int,
                       error: BuildError, buildlog: BuildLog) -> None:
    """The server was lost: back to the scheduler, which places another attempt."""
    async with deps.db.transaction() as tx:
        if not await _current(tx, deps, event.build_id, number):
            return
        await repo.end_attempt(tx, event.build_id, number, AttemptOutcome.LOST, now(),
                               error.info())
        await repo.update_job(tx, event.build_id, status=BuildStatus.QUEUED, phase=None,
                              error=error.info())
        await tx.emit(BuildFailed(build_id=event.build_id, server_id=event.server_id,
                                  error=error.info(), attempt=number, retryable=True))
    await buildlog.note(f"attempt {number} lost its server: {error.message}; "
                        "the build goes back to the queue")


async def _finish_lost_before_start(deps: BuilderDeps, event: BuildAllocated,
                                    error: BuildError) -> None:
    async with deps.db.transaction() as tx:
        if not await _current(tx, deps, event.build_id, None):
            return
        await repo.update_job(tx, event.build_id, status=BuildStatus.QUEUED, error=error.info())
        await tx.emit(BuildFailed(build_id=event.build_id, server_id=event.server_id,
                                  error=error.info(), attempt=event.attempt, retryable=True))


async def finish_cancelled(deps: BuilderDeps, build_id: uuid.UUID, number: int | None,
                           why: str, buildlog: BuildLog | None = None) -> bool:
    at = now()
    async with deps.db.transaction() as tx:
        record = await repo.lock_job(tx, build_id)
        if record is None or record.job.terminal:
            return False
        if number is not None:
            await repo.end_attempt(tx, build_id, number, AttemptOutcome.CANCELLED, at)
        reason = await tx.fetchval("SELECT cancel_reason FROM builds WHERE build_id = $1",
                                   build_id) or why
        await repo.update_job(tx, build_id, status=BuildStatus.CANCELLED, finished_at=at,
                              phase=None, position=None, estimated_start_s=None)
        await tx.emit(BuildCancelled(build_id=build_id, reason=reason))
        await tx.emit(BuildFinished(build_id=build_id, server_id=record.server_id,
                                    status=BuildStatus.CANCELLED))
    buildlog = buildlog or await BuildLog(deps.bus.js, build_id, number or 1).open()
    await buildlog.close(f"build cancelled: {reason}")
    return True
