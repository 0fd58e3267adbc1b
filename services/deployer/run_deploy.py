"""One deployment of an environment, start to verdict.

transfer (content-addressed cache, checksums on the host) → per-environment files →
domain defined and started paused → console attached → resumed → console read until the
boot is proven or has failed.  Each step's facts go out through the outbox; the console
goes out on ``log.console.<env_id>`` as it is read.  A failed boot keeps its log, stops
the VM (a reset loop would burn the host's CPU) and keeps the reservation, so the user
can retry or roll back.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from labfleet.shared.events.deploy import (
    ArtifactsTransferred,
    BootFailed,
    BootFailure,
    BootVerified,
    DeployStarted,
    VmStarted,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.env import (
    ArtifactChoiceError,
    EnvSpec,
    EnvStatus,
    EnvStatusChanged,
    ResolvedArtifacts,
    pick_boot_artifacts,
)
from labfleet.shared.ssh import SshError

from .adapters import repository as repo
from .adapters.artifacts import ArtifactMissing
from .adapters.console_log import ConsoleLog
from .adapters.host_files import HostFiles, TransferFailed
from .adapters.inventory import HostUnavailable, host_access
from .adapters.libvirt_host import Console, HostAccess, LibvirtFailed, public_uri
from .deps import DeployerDeps
from .domain.boot import BootJudge, BootResult, Verdict
from .domain.vm import VmPlan, domain_xml, kernel_cmdline, vm_name

log = logging.getLogger(__name__)

Progress = Callable[[], Awaitable[None]]


class DeployError(Exception):
    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.error = ErrorInfo(code=code, message=message, hint=hint)


def now() -> datetime:
    return datetime.now(UTC)


async def _status(deps: DeployerDeps, env_id: uuid.UUID, status: EnvStatus,
                  detail: str = "", **kw: object) -> None:
    async with deps.db.transaction() as tx:
        await repo.set_status(tx, env_id, status, **kw)  # type: ignore[arg-type]
        await tx.emit(EnvStatusChanged(env_id=env_id, status=status, detail=detail))


async def deploy(deps: DeployerDeps, env_id: uuid.UUID, number: int, progress: Progress) -> None:
    """Run deployment ``number`` of the environment unless it already ran (redelivery)."""
    async with deps.db.transaction() as tx:
        env = await repo.lock_env(tx, env_id)
        dep = await repo.deployment(tx, env_id, number)
        if env is None or dep is None or env["status"] in ("released", "releasing", "rejected"):
            return
        if dep["status"] in ("booted", "failed", "superseded") or env["current"] != number:
            return
        attempts = dep["attempts"] + 1
        if attempts > deps.config.max_attempts:
            given_up = True
        else:
            given_up = False
            # counted in the database before the work starts: a deployer killed during it
            # finds the count on redelivery
            first = {"started_at": now()} if attempts == 1 else {}
            await repo.update_deployment(tx, env_id, number, status="transferring",
                                         attempts=attempts, **first)
            await repo.set_status(tx, env_id, EnvStatus.DEPLOYING)
            await tx.emit(EnvStatusChanged(env_id=env_id, status=EnvStatus.DEPLOYING,
                                           detail=f"deployment {number}, attempt {attempts}"))
            await tx.emit(DeployStarted(env_id=env_id, deployment=number,
                                        host_id=env["host_id"], build_id=dep["build_id"]))
    if given_up:
        error = ErrorInfo(code="deploy_interrupted",
                          message=f"deployment {number} was interrupted {attempts - 1} times "
                                  "(the deployer stopped during each attempt)",
                          hint="read the deployer's log; redeploy when it runs steadily")
        await _remove_left_vm(deps, env["host_id"], env_id)
        await _finish_failed(deps, env_id, number, env["host_id"], BootFailure.DEPLOY_ERROR,
                             error, "", {})
        return
    spec = EnvSpec.model_validate_json(env["spec"])
    resolved = ResolvedArtifacts.model_validate_json(dep["resolved"])
    host_id: uuid.UUID = env["host_id"]
    console_log = await ConsoleLog(deps.bus.js, env_id, number).open()
    timings: dict[str, float] = {}
    judge = BootJudge(marker=spec.boot_marker)
    console: Console | None = None
    try:
        access = await host_access(deps.bus, host_id)
        assert access.view.qemu is not None
        files = HostFiles(deps.pool, access, access.view.qemu.image_dir)
        # the libvirt connection (an SSH login and libvirt's handshake) is made while the
        # artifacts travel; a failure here is reported by the start below
        connecting = asyncio.create_task(deps.libvirt.connect(access))
        started = time.perf_counter()
        boot = pick_boot_artifacts(spec, resolved.artifacts)
        try:
            report = await files.ensure(
                {a.sha256: a.name for a in boot.all()},
                lambda name, path: deps.artifacts.fetch(
                    next(a for a in boot.all() if a.name == name), path),
                deps.scratch, progress)
        finally:
            await asyncio.gather(connecting, return_exceptions=True)
        timings["transfer_s"] = time.perf_counter() - started
        async with deps.db.transaction() as tx:
            await repo.update_deployment(tx, env_id, number, status="starting",
                                         transferred_bytes=report.bytes_sent)
            await tx.emit(ArtifactsTransferred(
                env_id=env_id, deployment=number, host_id=host_id, bytes_sent=report.bytes_sent,
                cached=report.cached, sent=report.sent, duration_s=timings["transfer_s"]))

        started = time.perf_counter()
        disk = await files.prepare_env(env_id, boot.rootfs.sha256 if boot.rootfs else None)
        plan = VmPlan(env_id=env_id, arch=spec.arch, vcpus=spec.vcpus,
                      memory_mb=spec.memory_mb, kvm=spec.kvm,
                      kernel=files.cached_path(boot.kernel.sha256),
                      initrd=files.cached_path(boot.initrd.sha256) if boot.initrd else None,
                      disk=disk, cmdline=kernel_cmdline(spec.arch, spec.cmdline, disk is not None),
                      owner=env["requested_by"] or "", build_id=resolved.build_id,
                      commit=resolved.commit, deployment=number)
        console = await deps.libvirt.start_with_console(access, plan.name, domain_xml(plan),
                                                        asyncio.get_running_loop())
        timings["start_s"] = time.perf_counter() - started
        await _status(deps, env_id, EnvStatus.BOOTING, plan.name,
                      libvirt_uri=public_uri(access.view))
        async with deps.db.transaction() as tx:
            await repo.update_deployment(tx, env_id, number, status="booting")
            await tx.emit(VmStarted(env_id=env_id, deployment=number, host_id=host_id,
                                    vm_name=plan.name))

        started = time.perf_counter()
        result = await watch_boot(console, judge, console_log, spec.boot_timeout_s,
                                  deps.config.progress_every_s, progress)
        timings["boot_s"] = time.perf_counter() - started
        if result.verdict != Verdict.BOOTED:  # a failure's report includes what followed
            await _drain(console, judge, console_log, deps.config.console_grace_s)
            await console.close()
            console = None
    except asyncio.CancelledError:
        if console is not None:
            await console.close()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified BootFailed
        if console is not None:
            await console.close()
        error = _as_error(exc)
        await console_log.write(f"\n[labfleet] deployment {number} failed: {error.message}\n",
                                eof=True)
        await _finish_failed(deps, env_id, number, host_id, BootFailure.DEPLOY_ERROR, error,
                             judge.excerpt(), timings)
        return
    if result.verdict == Verdict.BOOTED:
        at = now()
        async with deps.db.transaction() as tx:
            await repo.update_deployment(tx, env_id, number, status="booted", finished_at=at,
                                         boot_log=judge.text[-200_000:], timings=timings)
            await repo.set_status(tx, env_id, EnvStatus.RUNNING, deployed_at=at)
            await tx.emit(EnvStatusChanged(env_id=env_id, status=EnvStatus.RUNNING,
                                           detail=result.line))
            await tx.emit(BootVerified(env_id=env_id, deployment=number, host_id=host_id,
                                       vm_name=vm_name(env_id), build_id=resolved.build_id,
                                       commit=resolved.commit, matched=result.line,
                                       boot_s=timings["boot_s"], timings=timings))
        log.info("boot verified", extra={"env_id": str(env_id), "deployment": number,
                                         **{k: round(v, 3) for k, v in timings.items()}})
        # the verdict went out at once; what the guest prints right after it (a prompt)
        # is added to the boot log while the deployment is already done
        assert console is not None
        deps.keep_tail(env_id, _keep_tail(deps, env_id, number, console, judge, console_log,
                                          f"\n[labfleet] boot verified: {result.line}\n"))
        return
    assert result.failure is not None
    await console_log.write(f"\n[labfleet] boot failed ({result.failure}): {result.line}\n",
                            eof=True)
    try:
        await deps.libvirt.remove_domain(access, vm_name(env_id))
    except (LibvirtFailed, SshError) as exc:  # the failure report matters more
        log.warning("could not stop the failed VM", extra={"env_id": str(env_id),
                                                          "error": str(exc)})
    error = ErrorInfo(code=f"boot_{result.failure}", message=_failure_message(result),
                      hint="read the boot log; retry (redeploy) or roll back to the previous "
                           "deployment")
    await _finish_failed(deps, env_id, number, host_id, result.failure, error,
                         judge.excerpt(), timings, boot_log=judge.text)


async def _remove_left_vm(deps: DeployerDeps, host_id: uuid.UUID | None,
                          env_id: uuid.UUID) -> None:
    """The VM an interrupted attempt may have left running (best effort: no host, no VM)."""
    if host_id is None:
        return
    try:
        access = await host_access(deps.bus, host_id)
        await deps.libvirt.remove_domain(access, vm_name(env_id))
    except (HostUnavailable, LibvirtFailed, SshError) as exc:
        log.warning("could not remove the VM of an interrupted deployment",
                    extra={"env_id": str(env_id), "error": str(exc)})


def _failure_message(result: BootResult) -> str:
    what = {"panic": "the kernel panicked", "oops": "the kernel oopsed",
            "timeout": "the boot marker did not appear in time",
            "reset_loop": "the machine keeps resetting",
            "stopped": "the VM stopped before the boot marker"}.get(str(result.failure),
                                                                     str(result.failure))
    return f"{what}: {result.line}"


async def watch_boot(console: Console, judge: BootJudge, console_log: ConsoleLog,
                     timeout_s: float, progress_every_s: float, progress: Progress) -> BootResult:
    deadline = time.monotonic() + timeout_s
    next_progress = time.monotonic() + progress_every_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return BootResult(Verdict.FAILED, f"no boot marker within {timeout_s:g} s",
                              BootFailure.TIMEOUT)
        data = await console.read(min(left, 1.0))
        if data is None:  # the console closed: the domain is gone
            return BootResult(Verdict.FAILED, "the console closed (the VM stopped)",
                              BootFailure.STOPPED)
        if data:
            result = judge.feed(await console_log.write_bytes(data))
            if result is not None:
                return result
        if time.monotonic() >= next_progress:
            await progress()
            next_progress = time.monotonic() + progress_every_s


async def _drain(console: Console, judge: BootJudge, console_log: ConsoleLog, grace: float) -> None:
    """Keep what the guest prints right after the verdict (a prompt, the panic's trace)."""
    deadline = time.monotonic() + grace
    while (left := deadline - time.monotonic()) > 0:
        data = await console.read(left)
        if not data:
            return
        text = await console_log.write_bytes(data)
        judge.text += text


async def _keep_tail(deps: DeployerDeps, env_id: uuid.UUID, number: int, console: Console,
                     judge: BootJudge, console_log: ConsoleLog, note: str) -> None:
    """The console for a little longer after the verdict (the rest of the marker's line,
    a prompt), then the verdict's note and the end of this deployment's console."""
    try:
        await _drain(console, judge, console_log, deps.config.console_grace_s)
    except asyncio.CancelledError:
        pass  # a redeploy or release comes first; what was read is kept
    finally:
        await console.close()
        await console_log.write(note, eof=True)
    async with deps.db.transaction() as tx:
        await repo.update_deployment(tx, env_id, number, boot_log=judge.text[-200_000:])


async def _finish_failed(deps: DeployerDeps, env_id: uuid.UUID, number: int,
                         host_id: uuid.UUID | None, kind: BootFailure, error: ErrorInfo,
                         excerpt: str, timings: dict[str, float], boot_log: str = "") -> None:
    async with deps.db.transaction() as tx:
        await repo.update_deployment(tx, env_id, number, status="failed", failure=kind.value,
                                     error=error, finished_at=now(), timings=timings,
                                     boot_log=(boot_log or excerpt)[-200_000:])
        await repo.set_status(tx, env_id, EnvStatus.FAILED, error=error)
        await tx.emit(EnvStatusChanged(env_id=env_id, status=EnvStatus.FAILED,
                                       detail=error.message))
        await tx.emit(BootFailed(env_id=env_id, deployment=number, host_id=host_id, kind=kind,
                                 error=error, log_excerpt=excerpt[-8000:]))
    log.warning("deployment failed", extra={"env_id": str(env_id), "deployment": number,
                                            "kind": kind.value, "error": error.message})


def _as_error(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, DeployError):
        return exc.error
    if isinstance(exc, HostUnavailable):
        return ErrorInfo(code="host_unavailable", message=str(exc), hint=exc.hint)
    if isinstance(exc, SshError):
        return ErrorInfo(code=f"ssh_{type(exc).__name__}", message=exc.message, hint=exc.hint)
    if isinstance(exc, LibvirtFailed):
        return ErrorInfo(code="libvirt_failed", message=str(exc),
                         hint="check libvirtd on the host and the VM's settings")
    if isinstance(exc, TransferFailed | ArtifactMissing):
        return ErrorInfo(code="transfer_failed", message=str(exc),
                         hint="redeploy; if it repeats, rebuild the artifacts")
    if isinstance(exc, ArtifactChoiceError):
        return ErrorInfo(code="no_boot_artifacts", message=str(exc), field=exc.field)
    return ErrorInfo(code="deploy_error", message=f"{type(exc).__name__}: {exc}")


__all__ = ["DeployError", "HostAccess", "deploy", "watch_boot"]
