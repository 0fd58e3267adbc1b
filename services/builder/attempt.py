"""One attempt of a build on its server, phase by phase.

fetch (mirror, resolve the ref, checkout) → configure (only with a config) → compile →
collect (the artifact globs; for kernels what the config produced, see
``domain/kernel``) → upload (object store, verified).  A kernel build with the TuxMake
backend runs one ``tuxmake`` step for configure, compile and collect.  Every remote step
runs detached (see ``domain/remote_plan``) and its output is streamed to the build log
as it is printed; while compiling, the lines are counted against the last compile of the
same tree for a percentage (``domain/progress``).  Between steps, and from the heartbeat
during them, ``guard`` raises :class:`Interrupted` when the build was cancelled or moved
elsewhere.
"""
from __future__ import annotations

import asyncio
import posixpath
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

from labfleet.shared.events.build import ArtifactInfo, BuildPhase, BuildSpec
from labfleet.shared.ssh import RemoteCommandFailed, SshError

from .adapters.artifact_store import ArtifactStore
from .adapters.history import CompileHistories
from .adapters.log_stream import BuildLog
from .adapters.remote import BuildHost, server_lost
from .adapters.s3_store import S3ArtifactStore
from .domain import kernel
from .domain import remote_plan as plan
from .domain.errors import BuildError, step_failed
from .domain.progress import CompileHistory, Throttle, estimate, history_key


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
    toolchain: str = ""


@dataclass
class BuildAttempt:
    build_id: uuid.UUID
    number: int
    spec: BuildSpec
    host: BuildHost
    ws: plan.Workspace
    log: BuildLog
    store: ArtifactStore | S3ArtifactStore
    toolchain_prefix: str
    jobs: int
    on_phase: Callable[[BuildPhase], Awaitable[None]]
    guard: Callable[[], Awaitable[None]]
    #: the compile's percentage, when there is a history to estimate it from
    on_percent: Callable[[BuildPhase, float], Awaitable[None]] | None = None
    histories: CompileHistories | None = None
    server_name: str = ""
    offset: int = 0
    #: counting the output lines of the running step (the compile) when set
    _counting: _LineCount | None = None

    async def run(self) -> AttemptResult:
        started = time.monotonic()
        spec = self.spec
        # the connection that carries the artifacts at the end logs in meanwhile
        self.host.prepare_transfer()
        await self.on_phase(BuildPhase.FETCH)
        await self.step("fetch", plan.fetch_step(self.ws, spec.repo_url))
        commit = await self.resolve()
        await self.step("checkout", plan.checkout_step(self.ws, spec.repo_url, commit))
        toolchain = await self.toolchain()
        tuxmake = ""
        if kernel.is_kernel(spec):
            tuxmake = await self.tuxmake()
        if kernel.use_tuxmake(spec, tuxmake):
            files = await self.run_tuxmake()
        elif kernel.is_kernel(spec):
            files = await self.run_kernel()
        else:
            files = await self.run_make()
        await self.on_phase(BuildPhase.UPLOAD)
        metadata = self.metadata(commit, toolchain, tuxmake if kernel.use_tuxmake(spec, tuxmake)
                                 else "")
        artifacts = await self.upload(files, metadata)
        return AttemptResult(commit, artifacts, time.monotonic() - started, toolchain)

    async def run_make(self) -> list[tuple[str, str]]:
        spec = self.spec
        configure = plan.configure_step(self.ws, spec, self.toolchain_prefix)
        if configure is not None:
            await self.on_phase(BuildPhase.CONFIGURE)
            await self.step("configure", configure)
        await self.on_phase(BuildPhase.COMPILE)
        await self.counted_step("compile", plan.compile_step(self.ws, spec,
                                                             self.toolchain_prefix, self.jobs))
        await self.on_phase(BuildPhase.COLLECT)
        return await self.collect()

    async def run_kernel(self) -> list[tuple[str, str]]:
        spec, prefix = self.spec, self.toolchain_prefix
        await self.on_phase(BuildPhase.CONFIGURE)
        await self.step("configure", kernel.configure_step(self.ws, spec, prefix))
        await self.on_phase(BuildPhase.COMPILE)
        await self.counted_step("compile", kernel.compile_step(self.ws, spec, prefix,
                                                               self.jobs))
        await self.on_phase(BuildPhase.COLLECT)
        if spec.artifacts:  # the developer's own list, exactly
            return await self.collect()
        await self.step("collect", kernel.collect_step(self.ws, spec, prefix, self.jobs))
        return await self.outputs()

    async def run_tuxmake(self) -> list[tuple[str, str]]:
        await self.on_phase(BuildPhase.CONFIGURE)
        # TuxMake configures first, then reports "I: config: PASS"; the rest is compiling
        await self.counted_step("tuxmake", kernel.tuxmake_step(self.ws, self.spec, self.jobs),
                                switch_on=b"I: config:")
        await self.on_phase(BuildPhase.COLLECT)
        if self.spec.artifacts:
            return await self.collect()
        return await self.outputs()

    # ---- steps --------------------------------------------------------------------

    async def step(self, name: str, argv: list[str]) -> None:
        await self.guard()
        await self.log.note(f"{name}: {plan.describe(argv)}")
        pid = await self.host.launch(self.ws, name, argv)
        status = await self.wait(name, pid)
        if status != 0:
            await self.guard()  # a kill for a cancel ends the step too: say so, not "failed"
            raise step_failed(name, status, self.log.last_lines())

    async def counted_step(self, name: str, argv: list[str],
                           switch_on: bytes | None = None) -> None:
        """A step whose output lines measure its progress against the last such build."""
        key = history_key(self.spec)
        history = await self.histories.get(key) if self.histories else None
        if history is not None:
            await self.log.note(f"the last such build printed {history.lines} lines in "
                                f"{history.seconds:.0f}s (build {history.build_id} on "
                                f"{history.server}); progress is measured against it")
        count = _LineCount(history=history, started=time.monotonic(), switch_on=switch_on,
                           compiling=switch_on is None)
        self._counting = count
        try:
            await self.step(name, argv)
        finally:
            self._counting = None
        if self.histories:
            await self.histories.put(key, CompileHistory(
                lines=count.lines, seconds=time.monotonic() - count.started,
                build_id=str(self.build_id), server=self.server_name))

    async def _sink(self, data: bytes) -> None:
        await self.log.write_bytes(data)
        count = self._counting
        if count is None:
            return
        count.lines += data.count(b"\n")
        if not count.compiling and count.switch_on and count.switch_on in data:
            count.compiling = True
            await self.on_phase(BuildPhase.COMPILE)
        if not count.compiling or self.on_percent is None:
            return
        now = time.monotonic()
        percent = estimate(count.history, count.lines, now - count.started)
        if count.throttle.due(now, percent):
            assert percent is not None
            await self.on_percent(BuildPhase.COMPILE, percent)

    async def wait(self, name: str, pid: int) -> int | None:
        """Follow the step's output to its end; its exit status (None: killed)."""
        dropped: BuildError | None = None
        for _ in range(3):
            try:
                self.offset = await self.host.follow(self.ws, name, self.offset, pid,
                                                    self._sink)
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

    async def toolchain(self) -> str:
        """The compiler's own name for itself, recorded with the artifacts."""
        found = await self.host.run(kernel.toolchain_version(self.toolchain_prefix),
                                    check=False)
        version = str(found.stdout or "").strip()
        await self.log.note(f"toolchain: {version or 'unknown'}")
        return version

    async def tuxmake(self) -> str:
        """``tuxmake --version`` on the server ("" when it has none); a build that asks
        for TuxMake where there is none fails here, before anything is compiled."""
        if self.spec.backend.value == "make":
            return ""
        found = await self.host.run(kernel.tuxmake_version(), check=False)
        version = str(found.stdout or "").strip()
        if not version and self.spec.backend.value == "tuxmake":
            raise BuildError(
                "tuxmake_missing", f"the build asks for the TuxMake backend, but build server "
                f"{self.host.name} has no tuxmake (neither on PATH nor in ~/.local/bin)",
                hint="install it on the server (pip install --user tuxmake), or submit with "
                     "backend 'auto' or 'make'", details={"server": self.host.name})
        await self.log.note(f"backend: {version or 'make (no tuxmake on this server)'}")
        return version

    def metadata(self, commit: str, toolchain: str, tuxmake: str) -> dict[str, str]:
        spec = self.spec
        out = {"build_id": str(self.build_id), "repository": spec.repo_url, "ref": spec.ref,
               "commit": commit, "arch": spec.arch.value, "kind": spec.build_kind.value,
               "config": spec.config, "toolchain": toolchain, "server": self.server_name}
        if spec.config_fragments:
            out["config_fragments"] = " ".join(spec.config_fragments)
        if spec.config_options:
            out["config_options"] = " ".join(spec.config_options)
        if tuxmake:
            out["backend"] = tuxmake
        return out

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

    async def outputs(self) -> list[tuple[str, str]]:
        """(remote path, artifact name) of every file in the output directory; a name is
        the file's own (``juno.dtb``), or its path below the directory joined with "-"
        where two files share one (``dtbs-arm-juno.dtb``): names stay one path segment."""
        base = kernel.out_dir(self.ws)
        listing = await self.host.output(kernel.list_outputs(self.ws))
        paths = sorted(p for p in listing.splitlines() if p.startswith(base + "/"))
        if not paths:
            raise BuildError("artifact_missing", "the build left no files to collect in "
                             f"{base}", hint="see the end of the log")
        names = [posixpath.basename(p) for p in paths]
        return [(p, n if names.count(n) == 1
                 else posixpath.relpath(p, base).replace("/", "-"))
                for p, n in zip(paths, names, strict=True)]

    async def upload(self, files: list[tuple[str, str]],
                     metadata: dict[str, str] | None = None) -> list[ArtifactInfo]:
        out: list[ArtifactInfo] = []
        # the server hashes its files meanwhile (its own CPU, not this process's)
        on_server = asyncio.create_task(self.host.sha256sums([p for p, _ in files])) \
            if files else None
        try:
            sums = (await on_server if on_server is not None
                    and self.store.needs_server_sums_first else {})
            for path, name in files:
                await self.guard()
                object_name = f"{self.build_id}/{name}"
                async with self.host.open_file(path) as remote_file:
                    stored = await self.store.upload(object_name, remote_file,
                                                     metadata=metadata,
                                                     sha256=sums.get(path, ""))
                await self.log.note(f"stored {name} ({stored.size} bytes, "
                                    f"sha256 {stored.sha256})")
                out.append(ArtifactInfo(name=name, size=stored.size, sha256=stored.sha256,
                                        object_name=object_name, bucket=self.store.bucket,
                                        backend=self.store.backend,
                                        metadata=dict(metadata or {})))
        except BaseException as exc:
            if on_server is not None:
                on_server.cancel()
                await asyncio.gather(on_server, return_exceptions=True)
            if isinstance(exc, RemoteCommandFailed):
                raise BuildError(
                    "artifact_unreadable", f"an artifact could not be read on "
                    f"{self.host.name}: {exc.message}",
                    hint="something removed or locked the build's output meanwhile; build "
                         "again", retryable=True) from None
            if isinstance(exc, asyncssh.Error | SshError):
                raise server_lost(self.host.access, exc) from None
            raise
        await self.verify(files, out, await on_server if on_server is not None else {})
        return out

    async def verify(self, files: list[tuple[str, str]], stored: list[ArtifactInfo],
                     on_server: dict[str, str] | None = None) -> None:
        """Each stored artifact's SHA-256 against the file on the server (hashed there now
        unless ``on_server`` has its sums) and the object store's record."""
        if on_server is None:
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


@dataclass
class _LineCount:
    history: CompileHistory | None
    started: float
    switch_on: bytes | None
    compiling: bool
    lines: int = 0
    throttle: Throttle = field(default_factory=Throttle)
