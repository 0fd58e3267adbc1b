"""One attempt of a build on its server, phase by phase.

fetch (mirror, resolve the ref, checkout) → configure (only with a config) → compile →
collect (the artifact globs) → upload (object store, verified).  Every remote step runs
detached (see ``domain/remote_plan``) and its output is streamed to the build log as it
is printed.  Between steps, and from the heartbeat during them, ``guard`` raises
:class:`Interrupted` when the build was cancelled or moved elsewhere.
"""
from __future__ import annotations

import posixpath
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncssh

from labfleet.shared.events.build import ArtifactInfo, BuildPhase, BuildSpec

from .adapters.artifact_store import ArtifactStore
from .adapters.log_stream import BuildLog
from .adapters.remote import BuildHost, server_lost
from .domain import remote_plan as plan
from .domain.errors import BuildError, step_failed


class Interrupted(Exception):
    """The build was cancelled, or the scheduler gave it to another server meanwhile."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class AttemptResult:
    commit: str
    artifacts: list[ArtifactInfo]
    duration_s: float


@dataclass
class BuildAttempt:
    build_id: uuid.UUID
    number: int
    spec: BuildSpec
    host: BuildHost
    ws: plan.Workspace
    log: BuildLog
    store: ArtifactStore
    toolchain_prefix: str
    jobs: int
    on_phase: Callable[[BuildPhase], Awaitable[None]]
    guard: Callable[[], Awaitable[None]]
    offset: int = 0

    async def run(self) -> AttemptResult:
        started = time.monotonic()
        spec = self.spec
        await self.on_phase(BuildPhase.FETCH)
        await self.step("fetch", plan.fetch_step(self.ws, spec.repo_url))
        commit = await self.resolve()
        await self.step("checkout", plan.checkout_step(self.ws, spec.repo_url, commit))
        configure = plan.configure_step(self.ws, spec, self.toolchain_prefix)
        if configure is not None:
            await self.on_phase(BuildPhase.CONFIGURE)
            await self.step("configure", configure)
        await self.on_phase(BuildPhase.COMPILE)
        await self.step("compile", plan.compile_step(self.ws, spec, self.toolchain_prefix,
                                                     self.jobs))
        await self.on_phase(BuildPhase.COLLECT)
        files = await self.collect()
        await self.on_phase(BuildPhase.UPLOAD)
        artifacts = await self.upload(files)
        return AttemptResult(commit, artifacts, time.monotonic() - started)

    # ---- steps --------------------------------------------------------------------

    async def step(self, name: str, argv: list[str]) -> None:
        await self.guard()
        await self.log.note(f"{name}: {plan.describe(argv)}")
        pid = await self.host.launch(self.ws, name, argv)
        status = await self.wait(name, pid)
        if status != 0:
            await self.guard()  # a kill for a cancel ends the step too: say so, not "failed"
            raise step_failed(name, status, self.log.last_lines())

    async def wait(self, name: str, pid: int) -> int | None:
        """Follow the step's output to its end; its exit status (None: killed)."""
        dropped: BuildError | None = None
        for _ in range(3):
            try:
                self.offset = await self.host.follow(self.ws, self.offset, pid,
                                                     self.log.write_bytes)
            except BuildError as exc:
                if not exc.retryable:
                    raise
                dropped = exc  # the channel broke; the server may still answer
            status = await self.host.step_status(self.ws, name, pid)
            if isinstance(status, int):
                return status
            if status == "gone":
                return None
        raise dropped or BuildError("server_lost", f"lost the output of the {name} step",
                                    retryable=True)

    async def resolve(self) -> str:
        spec = self.spec
        found = await self.host.run(plan.rev_parse(self.ws, spec.repo_url, spec.ref),
                                    check=False)
        commit = str(found.stdout or "").strip()
        if found.exit_status != 0 or not commit:
            raise BuildError("ref_not_found",
                             f"{spec.ref!r} is no branch, tag or commit of {spec.repo_url}",
                             hint="check the ref (branch names are case-sensitive)",
                             details={"ref": spec.ref, "repo_url": spec.repo_url})
        await self.log.note(f"{spec.ref} is {commit}")
        return commit

    # ---- artifacts ----------------------------------------------------------------

    async def collect(self) -> list[tuple[str, str]]:
        """(remote path, artifact name) for every file the globs match; a glob matching
        nothing fails the build."""
        found: dict[str, None] = {}
        try:
            async with self.host.sftp() as sftp:
                for pattern in self.spec.artifacts:
                    try:
                        matches = await sftp.glob(f"{self.ws.src}/{pattern}")
                    except asyncssh.SFTPNoSuchFile:
                        matches = []
                    files = [str(m) for m in matches if await sftp.isfile(m)]
                    if not files:
                        raise BuildError(
                            "artifact_missing",
                            f"no file matches the artifact pattern {pattern!r} after the build",
                            hint="compare the artifacts list with what make produced (log)",
                            details={"pattern": pattern})
                    found.update(dict.fromkeys(sorted(files)))
        except asyncssh.Error as exc:
            raise server_lost(self.host.access, exc) from None
        paths = list(found)
        names = [posixpath.basename(p) for p in paths]
        # a name seen twice is stored under its path in the tree instead
        return [(p, n if names.count(n) == 1 else posixpath.relpath(p, self.ws.src))
                for p, n in zip(paths, names, strict=True)]

    async def upload(self, files: list[tuple[str, str]]) -> list[ArtifactInfo]:
        out: list[ArtifactInfo] = []
        try:
            async with self.host.sftp() as sftp:
                for path, name in files:
                    await self.guard()
                    object_name = f"{self.build_id}/{name}"
                    async with sftp.open(path, "rb") as remote_file:
                        stored = await self.store.upload(object_name, remote_file)
                    await self.log.note(f"stored {name} ({stored.size} bytes, "
                                        f"sha256 {stored.sha256})")
                    out.append(ArtifactInfo(name=name, size=stored.size, sha256=stored.sha256,
                                            object_name=object_name, bucket=self.store.bucket))
        except asyncssh.Error as exc:
            raise server_lost(self.host.access, exc) from None
        await self.verify(files, out)
        return out

    async def verify(self, files: list[tuple[str, str]], stored: list[ArtifactInfo]) -> None:
        on_server = await self.host.sha256sums([p for p, _ in files]) if files else {}
        for (path, name), artifact in zip(files, stored, strict=True):
            kept = await self.store.stored_digest(artifact.object_name)
            theirs = on_server.get(path)
            if theirs != artifact.sha256 or kept != artifact.sha256:
                raise BuildError(
                    "artifact_checksum_mismatch",
                    f"{name}: SHA-256 differs — read {artifact.sha256}, on the server "
                    f"{theirs}, in the object store {kept}",
                    hint="the file changed while it was read, or the transfer was corrupted; "
                         "build again", details={"artifact": name})
