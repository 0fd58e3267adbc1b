"""The build jobs' projection and the builder's commands, one function each.

Running an allocated build is the long handler in ``run_build``.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from labfleet.shared.bus import error_reply
from labfleet.shared.events.build import (
    ArtifactListReply,
    BuildFailed,
    BuildFinished,
    BuildListReply,
    BuildRejected,
    BuildReply,
    BuildRequested,
    BuildStatus,
    CancelBuild,
    GetBuild,
    ListArtifacts,
    ListBuilds,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.request import RequestQueued
from labfleet.shared.ssh import RemoteCommandFailed

from .adapters import marks
from .adapters import repository as repo
from .adapters.inventory import CredentialsUnavailable, server_access
from .adapters.log_stream import BuildLog
from .adapters.remote import BuildHost
from .deps import BuilderDeps
from .domain.errors import BuildError
from .run_build import finish_cancelled, now

log = logging.getLogger(__name__)

# ---- projection -------------------------------------------------------------------------


async def build_requested(event: BuildRequested, deps: BuilderDeps) -> None:
    async with deps.db.consume("build-requested", event) as tx:
        if tx is not None:
            await repo.insert_job(tx, event.build_id, event.spec, event.requested_by,
                                  event.occurred_at)


async def request_queued(event: RequestQueued, deps: BuilderDeps) -> None:
    if event.kind != "build":
        return
    async with deps.db.consume("request-queued", event) as tx:
        if tx is not None and not await repo.set_wait(
                tx, event.request_id, event.position, event.estimated_start_s,
                event.occurred_at):
            # build.requested travels on another consumer and is usually just behind:
            # roll back and let the message come again
            raise LookupError(f"build {event.request_id} not known yet")


async def build_rejected(event: BuildRejected, deps: BuilderDeps) -> None:
    """The scheduler gave up on the build (no server, retries exhausted): it failed."""
    async with deps.db.consume("build-rejected", event) as tx:
        if tx is None:
            return
        record = await repo.lock_job(tx, event.build_id)
        if record is None or record.job.terminal:
            return
        await repo.update_job(tx, event.build_id, status=BuildStatus.FAILED,
                              finished_at=now(), error=event.error, phase=None,
                              position=None, estimated_start_s=None)
        attempts = len(record.job.attempts)
        await tx.emit(BuildFailed(build_id=event.build_id, server_id=record.server_id,
                                  error=event.error, attempt=max(1, attempts), retryable=False))
        await tx.emit(BuildFinished(build_id=event.build_id, server_id=record.server_id,
                                    status=BuildStatus.FAILED))
    buildlog = await BuildLog(deps.bus.js, event.build_id, max(1, attempts)).open()
    await buildlog.close(f"build failed: {event.error.code}: {event.error.message}")


# ---- commands ---------------------------------------------------------------------------


async def get_build(cmd: GetBuild, deps: BuilderDeps) -> BuildReply:
    view = await repo.view(deps.db, cmd.build_id)
    if view is None:
        return error_reply(BuildReply, "not_found", f"no build has the id {cmd.build_id}",
                           hint="list builds with build.cmd.list", field_name="build_id")
    return BuildReply(ok=True, build=(await marks.with_marks(deps.db, [view]))[0])


async def list_builds(cmd: ListBuilds, deps: BuilderDeps) -> BuildListReply:
    limit = max(1, min(cmd.limit, 1000))
    if cmd.server_id is not None or cmd.active_only:
        views = await marks.views_where(deps.db, server_id=cmd.server_id,
                                        active_only=cmd.active_only, limit=limit)
    else:
        views = await repo.recent_views(deps.db, limit)
    return BuildListReply(ok=True, builds=await marks.with_marks(deps.db, views))


async def cancel_build(cmd: CancelBuild, deps: BuilderDeps) -> BuildReply:
    """Queued: cancelled at once.  Running: its remote process group is killed, then the
    attempt reports the cancel; the reply waits (a while) for that."""
    reason = cmd.reason or "cancelled"
    async with deps.db.transaction() as tx:
        record = await repo.lock_job(tx, cmd.build_id)
        if record is None:
            return error_reply(BuildReply, "not_found", f"no build has the id {cmd.build_id}",
                               field_name="build_id")
        if record.job.terminal:
            return BuildReply(ok=False, build=await repo.view(tx, cmd.build_id), error=ErrorInfo(
                code="already_finished",
                message=f"the build already {record.job.status}; nothing to cancel"))
        await repo.update_job(tx, cmd.build_id, cancel_requested=True, cancel_reason=reason)
        running = record.job.current if record.job.current and record.job.current.in_progress \
            else None
    if running is None:
        await finish_cancelled(deps, cmd.build_id, None, reason)
    else:
        if running.build_dir:
            await _kill(deps, running.server_id, running.build_dir)
        await _wait_terminal(deps, cmd.build_id, deps.config.cancel_wait_s)
    return BuildReply(ok=True, build=await repo.view(deps.db, cmd.build_id))


async def _kill(deps: BuilderDeps, server_id: uuid.UUID, build_dir: str) -> None:
    try:
        access = await server_access(deps.bus, server_id)
        host = BuildHost(deps.ssh, access, command_timeout=deps.settings.ssh_command_timeout_s)
        await host.kill(build_dir)
    except (BuildError, CredentialsUnavailable, RemoteCommandFailed) as exc:
        # the running attempt's heartbeat kills it as well once it sees the request
        log.warning("cancel: could not kill the build's processes", extra={"error": str(exc)})


async def _wait_terminal(deps: BuilderDeps, build_id: uuid.UUID, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await deps.db.fetchval("SELECT status FROM builds WHERE build_id = $1",
                                        build_id)
        if status in (BuildStatus.CANCELLED, BuildStatus.FAILED, BuildStatus.SUCCEEDED):
            return
        await asyncio.sleep(0.2)


async def list_artifacts(cmd: ListArtifacts, deps: BuilderDeps) -> ArtifactListReply:
    if cmd.build_id is not None:
        build_id = cmd.build_id
        view = await repo.view(deps.db, build_id)
        if view is None:
            return error_reply(ArtifactListReply, "not_found",
                               f"no build has the id {build_id}", field_name="build_id")
    elif cmd.commit or cmd.ref:
        if cmd.commit is not None and len(cmd.commit) < 7:
            return error_reply(ArtifactListReply, "commit_too_short",
                               "give at least 7 characters of the commit hash",
                               field_name="commit")
        found = await repo.find_succeeded(deps.db, commit=cmd.commit, ref=cmd.ref,
                                          arch=cmd.arch, repo_url=cmd.repo_url)
        if found is None:
            what = (f"commit {cmd.commit}" if cmd.commit else f"ref {cmd.ref!r}") + (
                f" for {cmd.arch}" if cmd.arch else "")
            return error_reply(ArtifactListReply, "not_found",
                               f"no succeeded build of {what}",
                               hint="list builds to see what was built",
                               field_name="commit" if cmd.commit else "ref")
        build_id = found
    else:
        return error_reply(ArtifactListReply, "missing_selector",
                           "say which artifacts: build_id, commit, or ref (latest successful)",
                           field_name="build_id")
    return ArtifactListReply(ok=True, build_id=build_id,
                             artifacts=await repo.artifacts_of(deps.db, build_id))
