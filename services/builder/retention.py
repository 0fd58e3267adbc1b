"""Keeping and deleting artifacts: pin and tag commands, and the periodic retention pass.

A build's artifacts (objects in the store and their rows) are deleted once the build
finished more than ``LABFLEET_ARTIFACT_RETENTION_DAYS`` ago, unless the build is pinned or
carries a tag.  The build's record stays, saying when its artifacts expired.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from labfleet.shared.artifacts import ArtifactReader, ArtifactStoreUnavailable
from labfleet.shared.bus import error_reply
from labfleet.shared.events.build import (
    ArtifactInfo,
    ArtifactsExpired,
    BuildReply,
    PinBuild,
    TagBuild,
)

from .adapters import marks
from .adapters import repository as repo
from .deps import BuilderDeps

log = logging.getLogger(__name__)


async def _marked_view(deps: BuilderDeps, build_id: object) -> BuildReply:
    view = await repo.view(deps.db, build_id)  # type: ignore[arg-type]
    assert view is not None
    return BuildReply(ok=True, build=(await marks.with_marks(deps.db, [view]))[0])


def _unknown(build_id: object) -> BuildReply:
    return error_reply(BuildReply, "not_found", f"no build has the id {build_id}",
                       hint="list builds to find its id", field_name="build_id")


async def pin_build(cmd: PinBuild, deps: BuilderDeps) -> BuildReply:
    async with deps.db.transaction() as tx:
        # the build row's lock orders a pin against a retention pass deleting its artifacts
        expired = await tx.fetchrow("SELECT artifacts_expired_at FROM builds "
                                    "WHERE build_id = $1 FOR UPDATE", cmd.build_id)
        if expired is None:
            return _unknown(cmd.build_id)
        await marks.set_pinned(tx, cmd.build_id, cmd.pinned)
    log.info("build pinned" if cmd.pinned else "build unpinned",
             extra={"build_id": str(cmd.build_id), "by": cmd.requested_by})
    return await _marked_view(deps, cmd.build_id)


async def tag_build(cmd: TagBuild, deps: BuilderDeps) -> BuildReply:
    async with deps.db.transaction() as tx:
        if await tx.fetchval("SELECT true FROM builds WHERE build_id = $1 FOR UPDATE",
                             cmd.build_id) is None:
            return _unknown(cmd.build_id)
        await marks.change_tags(tx, cmd.build_id, cmd.tags, cmd.remove)
    return await _marked_view(deps, cmd.build_id)


async def _delete_object(deps: BuilderDeps, artifact: ArtifactInfo) -> None:
    """Gone already (a pass that died after deleting it) is no error: the goal is met."""
    try:
        await ArtifactReader(lambda: deps.bus.js, deps.s3, who="builder").delete(artifact)
    except ArtifactStoreUnavailable as exc:
        raise RuntimeError(str(exc)) from None


async def expire_artifacts(deps: BuilderDeps, now: datetime | None = None) -> int:
    """One retention pass; returns how many builds lost their artifacts."""
    now = now or datetime.now(UTC)
    before = now - timedelta(days=deps.settings.artifact_retention_days)
    expired = 0
    for build_id in await marks.expired_builds(deps.db, before):
        async with deps.db.transaction() as tx:
            artifacts = await marks.lock_for_expiry(tx, build_id)
            if artifacts is None:
                continue
            # objects first: a crash in between leaves rows pointing at nothing, and the
            # next pass deletes them; never an object that no row accounts for
            for a in artifacts:
                await _delete_object(deps, a)
            await marks.mark_expired(tx, build_id, now)
            await tx.emit(ArtifactsExpired(build_id=build_id, names=[a.name for a in artifacts],
                                           bytes_freed=sum(a.size for a in artifacts)))
        expired += 1
        log.info("artifacts expired", extra={"build_id": str(build_id),
                                             "count": len(artifacts)})
    return expired


async def retention_loop(deps: BuilderDeps, interval_s: float) -> None:
    while True:
        try:
            await expire_artifacts(deps)
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(interval_s)
