"""One plain function per command and event; dependencies come in as arguments."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from labfleet.shared.bus import Delivery, error_reply
from labfleet.shared.events.build import ArtifactListReply, BuildReply, GetBuild, ListArtifacts
from labfleet.shared.events.deploy import DeployRequested
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.env import (
    ArtifactChoiceError,
    ArtifactSelector,
    DeployReply,
    EnvAllocated,
    EnvListReply,
    EnvRejected,
    EnvReleased,
    EnvReply,
    EnvRequested,
    EnvSpec,
    EnvStatus,
    EnvStatusChanged,
    GetEnv,
    ListEnvs,
    RedeployEnv,
    ReleaseEnv,
    ResolvedArtifacts,
    RollbackEnv,
    pick_boot_artifacts,
)
from labfleet.shared.events.request import RequestQueued
from labfleet.shared.ssh import SshError

from .adapters import repository as repo
from .adapters.host_files import HostFiles
from .adapters.inventory import HostUnavailable, host_access
from .adapters.libvirt_host import LibvirtFailed
from .deps import DeployerDeps
from .domain.vm import vm_name
from .run_deploy import deploy, now

log = logging.getLogger(__name__)

BUSY = ("deploying", "booting", "releasing")

# ---- the environment's life -------------------------------------------------------------


async def env_requested(event: EnvRequested, deps: DeployerDeps) -> None:
    async with deps.db.consume("env-requested", event) as tx:
        if tx is not None:
            await repo.insert_env(tx, event.env_id, event.spec, event.resolved,
                                  event.requested_by, event.occurred_at)


async def request_queued(event: RequestQueued, deps: DeployerDeps) -> None:
    if event.kind != "env":
        return
    async with deps.db.consume("request-queued", event) as tx:
        if tx is not None and await repo.lock_env(tx, event.request_id) is None:
            # env.requested travels on another consumer and is usually just behind
            raise LookupError(f"environment {event.request_id} not known yet")
        if tx is not None:
            await repo.set_wait(tx, event.request_id, event.position, event.estimated_start_s)


async def env_rejected(event: EnvRejected, deps: DeployerDeps) -> None:
    async with deps.db.consume("env-rejected", event) as tx:
        if tx is not None:
            await repo.set_status(tx, event.env_id, EnvStatus.REJECTED, error=event.error,
                                  released_at=event.occurred_at)


async def env_allocated(event: EnvAllocated, msg: Delivery, deps: DeployerDeps) -> None:
    """The reservation exists: record it, then run the first deployment."""
    async with deps.db.consume("env-allocated", event) as tx:
        if tx is not None:
            await repo.insert_env(tx, event.env_id, event.spec, event.resolved,
                                  event.requested_by, event.occurred_at)
            env = await repo.lock_env(tx, event.env_id)
            if env is not None and env["status"] == "queued":
                await repo.allocate(tx, event.env_id, event.host_id, event.host_name,
                                    vm_name(event.env_id), event.occurred_at)
                await repo.new_deployment(tx, event.env_id, event.resolved, event.requested_by)
                await tx.emit(EnvStatusChanged(env_id=event.env_id, status=EnvStatus.ALLOCATED,
                                               detail=event.host_name))
    await _run(deps, event.env_id, 1, msg)


async def deploy_requested(event: DeployRequested, msg: Delivery, deps: DeployerDeps) -> None:
    await _run(deps, event.env_id, event.deployment, msg)


async def _run(deps: DeployerDeps, env_id: uuid.UUID, number: int, msg: Delivery) -> None:
    task = asyncio.current_task()
    assert task is not None
    deps.running[env_id] = task
    try:
        await deploy(deps, env_id, number, msg.in_progress)
    finally:
        if deps.running.get(env_id) is task:
            del deps.running[env_id]


# ---- commands -----------------------------------------------------------------------------


async def get_env(cmd: GetEnv, deps: DeployerDeps) -> EnvReply:
    view = await repo.view(deps.db, cmd.env_id)
    if view is None:
        return error_reply(EnvReply, "not_found", f"no environment has the id {cmd.env_id}",
                           field_name="env_id")
    return EnvReply(ok=True, env=view)


async def list_envs(cmd: ListEnvs, deps: DeployerDeps) -> EnvListReply:
    return EnvListReply(ok=True, envs=await repo.views(deps.db, cmd.limit,
                                                       cmd.include_released))


async def release_env(cmd: ReleaseEnv, deps: DeployerDeps) -> DeployReply:
    async with deps.db.transaction() as tx:
        env = await repo.lock_env(tx, cmd.env_id)
        if env is None:
            return error_reply(DeployReply, "not_found", f"no environment has the id {cmd.env_id}",
                               field_name="env_id")
        if env["status"] in ("released", "rejected"):
            return DeployReply(ok=True, env_id=cmd.env_id)  # already gone: nothing to do
        if env["host_id"] is None:  # still queued: leave the queue
            await repo.set_status(tx, cmd.env_id, EnvStatus.RELEASED, released_at=now())
            await tx.emit(EnvReleased(env_id=cmd.env_id, reason=f"released by {cmd.requested_by}"
                                      if cmd.requested_by else "released while queued"))
            return DeployReply(ok=True, env_id=cmd.env_id)
        await repo.set_status(tx, cmd.env_id, EnvStatus.RELEASING)
    await deps.end_tail(cmd.env_id)
    running = deps.running.get(cmd.env_id)
    if running is not None:  # a deployment in this process: stop it before the VM goes
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
    try:
        access = await host_access(deps.bus, env["host_id"])
        assert access.view.qemu is not None
        await deps.libvirt.remove_domain(access, vm_name(cmd.env_id))
        await HostFiles(deps.pool, access, access.view.qemu.image_dir).remove_env(cmd.env_id)
    except (HostUnavailable, LibvirtFailed, SshError) as exc:
        message = exc.message if isinstance(exc, SshError) else str(exc)
        async with deps.db.transaction() as tx:
            await repo.set_status(tx, cmd.env_id, EnvStatus(env["status"]))
        return error_reply(DeployReply, "release_failed",
                           f"could not remove the VM from {env['host_name']}: {message}",
                           hint="the environment still holds its host; try again when the "
                                "host answers")
    async with deps.db.transaction() as tx:
        await repo.set_status(tx, cmd.env_id, EnvStatus.RELEASED, released_at=now())
        await tx.emit(EnvStatusChanged(env_id=cmd.env_id, status=EnvStatus.RELEASED))
        await tx.emit(EnvReleased(env_id=cmd.env_id, host_id=env["host_id"],
                                  reason=f"released by {cmd.requested_by}"
                                  if cmd.requested_by else "released"))
    log.info("environment released", extra={"env_id": str(cmd.env_id)})
    return DeployReply(ok=True, env_id=cmd.env_id)


async def _resolve(selector: ArtifactSelector, spec: EnvSpec, deps: DeployerDeps
                   ) -> ResolvedArtifacts | DeployReply:
    query = ListArtifacts(build_id=selector.build_id, commit=selector.commit,
                          ref=selector.branch, arch=None if selector.build_id else spec.arch,
                          latest=selector.branch is not None, repo_url=selector.repo_url)
    timeout = deps.config.builder_timeout_s
    try:
        listed = await deps.bus.request(query, ArtifactListReply, timeout=timeout)
        if not listed.ok or listed.build_id is None:
            err = listed.error or ErrorInfo(code="not_found", message="no such build")
            return DeployReply(ok=False, error=err.model_copy(update={
                "message": f"{selector.describe()}: {err.message}", "field": "artifacts"}))
        build = await deps.bus.request(GetBuild(build_id=listed.build_id), BuildReply,
                                       timeout=timeout)
    except (NoRespondersError, NatsTimeout, TimeoutError):
        return error_reply(DeployReply, "builder_unavailable",
                           f"the builder did not answer which artifacts {selector.describe()} "
                           "has", hint="check that the builder runs, then try again")
    resolved = ResolvedArtifacts(build_id=listed.build_id, commit=(
        build.build.commit or "") if build.ok and build.build else "", artifacts=listed.artifacts)
    try:
        pick_boot_artifacts(spec, resolved.artifacts)
    except ArtifactChoiceError as exc:
        return error_reply(DeployReply, "no_boot_artifacts", str(exc), field_name=exc.field)
    return resolved


async def _new_deployment(deps: DeployerDeps, env_id: uuid.UUID, requested_by: str,
                          choose: object) -> DeployReply:
    """Shared by redeploy and rollback: ``choose(tx, env)`` gives the artifacts or a reply."""
    await deps.end_tail(env_id)  # the last boot's console is closed before the next one
    async with deps.db.transaction() as tx:
        env = await repo.lock_env(tx, env_id)
        if env is None:
            return error_reply(DeployReply, "not_found", f"no environment has the id {env_id}",
                               field_name="env_id")
        if env["status"] in ("released", "rejected", "queued") or env["host_id"] is None:
            return error_reply(DeployReply, "not_deployable",
                               f"the environment is {env['status']}: there is no host to "
                               "deploy to", hint="create a new environment")
        if env["status"] in BUSY or env_id in deps.running:
            return error_reply(DeployReply, "busy",
                               f"the environment is {env['status']}; wait for the running "
                               "deployment to finish")
        resolved = await choose(tx, env)  # type: ignore[operator]
        if isinstance(resolved, DeployReply):
            return resolved
        number = await repo.new_deployment(tx, env_id, resolved, requested_by)
        await tx.execute("UPDATE deployments SET status = 'superseded' WHERE env_id = $1 "
                         "AND number < $2 AND status NOT IN ('booted', 'failed')",
                         env_id, number)
        await tx.emit(DeployRequested(env_id=env_id, deployment=number, resolved=resolved,
                                      requested_by=requested_by))
    return DeployReply(ok=True, env_id=env_id, deployment=number, build_id=resolved.build_id)


async def redeploy_env(cmd: RedeployEnv, deps: DeployerDeps) -> DeployReply:
    resolved_new: ResolvedArtifacts | DeployReply | None = None
    if cmd.artifacts is not None:
        view = await repo.view(deps.db, cmd.env_id)
        if view is None:
            return error_reply(DeployReply, "not_found", f"no environment has the id {cmd.env_id}",
                               field_name="env_id")
        resolved_new = await _resolve(cmd.artifacts, view.spec, deps)
        if isinstance(resolved_new, DeployReply):
            return resolved_new

    async def choose(tx: object, env: object) -> ResolvedArtifacts:
        if resolved_new is not None:
            return resolved_new  # type: ignore[return-value]
        dep = await repo.deployment(tx, cmd.env_id, env["current"])  # type: ignore[arg-type,index]
        source = dep["resolved"] if dep else env["resolved"]  # type: ignore[index]
        return ResolvedArtifacts.model_validate_json(source)

    return await _new_deployment(deps, cmd.env_id, cmd.requested_by, choose)


async def rollback_env(cmd: RollbackEnv, deps: DeployerDeps) -> DeployReply:
    async def choose(tx: object, env: object) -> ResolvedArtifacts | DeployReply:
        previous = await repo.previous_build(tx, cmd.env_id)  # type: ignore[arg-type]
        if previous is None:
            return error_reply(DeployReply, "nothing_to_roll_back",
                               "this environment has no earlier deployment of another build",
                               hint="redeploy (retry) instead, or deploy another build")
        return ResolvedArtifacts.model_validate_json(previous["resolved"])

    return await _new_deployment(deps, cmd.env_id, cmd.requested_by, choose)
