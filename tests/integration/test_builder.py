"""The builder (with the scheduler) against real NATS, PostgreSQL and an OpenSSH server.

Builds are of a small C program from a git repository each test creates; the build
server is the sshd fixture on loopback (native gcc, x86_64).  Inventory is not part of
this piece: the test publishes ``resource.registered``/``health.changed`` itself and
answers ``resource.cmd.credentials`` with a small responder speaking the real contract.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.api
import pytest
from pydantic import SecretStr

from labfleet.builder.config import BuilderConfig
from labfleet.builder.main import create as create_builder
from labfleet.embedded.ports import free_port
from labfleet.scheduler.config import SchedulerConfig
from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.build import (
    ArtifactListReply,
    BuildListReply,
    BuildReply,
    BuildSpec,
    BuildStatus,
    CancelBuild,
    GetBuild,
    ListArtifacts,
    ListBuilds,
    LogChunk,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HealthChanged, HealthStatus
from labfleet.shared.events.resource import (
    TOOLCHAIN_PREFIX,
    Arch,
    BuildServerCapabilities,
    CredentialsReply,
    GetCredentials,
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceView,
    SshTarget,
    Toolchain,
)
from labfleet.shared.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

if platform.machine() != "x86_64" or not shutil.which("gcc"):
    pytest.skip("these builds need an x86_64 machine with gcc", allow_module_level=True)

#: the test repositories are local ones on the build server (file://): an admin choice
LOCAL_REPOS_ALLOWED = "https,http,git,ssh,file"
TERMINAL = {BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED}

# ---- a git repository to build ------------------------------------------------------

MAIN_C = '#include <stdio.h>\nint main(void) { puts("hello from labfleet"); return 0; }\n'
SLOW_MAKEFILE = """\
all: hello out.txt
hello: main.c
\t@echo "compiling at $$(date +%s.%N)"
\t@sleep 1
\t$(CC) -o hello main.c
\t@sleep 1
\t@echo "linked at $$(date +%s.%N)"
out.txt:
\tprintf 'labfleet artifact\\n' > out.txt
"""
QUICK_MAKEFILE = "all: hello\nhello: main.c\n\t$(CC) -o hello main.c\n"
NAP_MAKEFILE = "all: hello\nhello: main.c\n\t@echo napping\n\tsleep {seconds}\n\t$(CC) -o hello main.c\n"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def make_repo(path: Path, makefile: str, main_c: str = MAIN_C) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, makefile, main_c, "first")
    return path


def commit(repo: Path, makefile: str, main_c: str, message: str) -> str:
    (repo / "Makefile").write_text(makefile)
    (repo / "main.c").write_text(main_c)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def processes_of(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


async def no_processes_left(build_dir: str) -> None:
    """Nothing of the build runs (after the builder's own clean-up, a moment later)."""
    async with asyncio.timeout(10):
        while processes_of(build_dir):
            await asyncio.sleep(0.1)


def nap(seconds: int, unique: str) -> str:
    """A sleep length no other process on the machine has: ``pgrep -f`` finds only ours."""
    return f"{seconds}.{int(unique, 16) % 10**6:06d}"


# ---- the stack under test -------------------------------------------------------------


@dataclass
class Observed:
    subject: str
    data: dict[str, Any]
    at: float


@dataclass
class Lab:
    nc: Any
    sshd: Any
    label: str
    servers: dict[uuid.UUID, ResourceView] = field(default_factory=dict)
    events: list[Observed] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    def server_view(self, name: str, *, port: int | None = None, work_dir: str = "",
                    arches: tuple[Arch, ...] = (Arch.X86_64,)) -> ResourceView:
        caps = BuildServerCapabilities(
            cpu_cores=2, memory_mb=2048, disk_total_gb=100.0, disk_free_gb=80.0,
            machine="x86_64", work_dir=work_dir,
            toolchains=[Toolchain(arch=a, prefix=TOOLCHAIN_PREFIX[a],
                                  compiler=f"{TOOLCHAIN_PREFIX[a]}gcc", version="test")
                        for a in arches])
        return ResourceView(
            resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=name,
            ssh=SshTarget(address=self.sshd.host, port=port or self.sshd.port,
                          username=self.sshd.username, host_key=self.sshd.host_key),
            architectures=list(arches), capabilities=caps, labels={"pool": self.label})

    async def register(self, view: ResourceView, scheduler_db: Any) -> ResourceView:
        self.servers[view.resource_id] = view
        js = self.nc.jetstream()
        await js.publish(ResourceRegistered.subject,
                         ResourceRegistered(resource=view).model_dump_json().encode())
        await js.publish(HealthChanged.subject, HealthChanged(
            resource_id=view.resource_id, kind=ResourceKind.BUILD_SERVER,
            status=HealthStatus.ONLINE, previous=HealthStatus.UNKNOWN).model_dump_json().encode())
        async with asyncio.timeout(15):
            while not await scheduler_db.fetchval(
                    "SELECT true FROM build_servers JOIN server_health USING (server_id) "
                    "WHERE server_id = $1 AND status = 'online'", view.resource_id):
                await asyncio.sleep(0.05)
        return view

    async def request(self, command: Any, reply_type: Any, timeout: float = 30.0) -> Any:
        msg = await self.nc.request(command.subject, reveal_secrets_json(command).encode(),
                                    timeout=timeout)
        return reply_type.model_validate_json(msg.data)

    async def submit(self, **spec: Any) -> SubmitBuildReply:
        spec.setdefault("labels", {"pool": self.label})
        return await self.request(SubmitBuild(spec=BuildSpec(**spec), requested_by="test"),
                                  SubmitBuildReply)

    async def build(self, build_id: uuid.UUID) -> Any:
        # the builder learns of a build from build.requested, a moment after the submit
        async with asyncio.timeout(30):
            while True:
                try:
                    reply = await self.request(GetBuild(build_id=build_id), BuildReply)
                except nats.errors.NoRespondersError:  # a builder (re)starting
                    await asyncio.sleep(0.2)
                    continue
                if reply.ok or reply.error.code != "not_found":
                    break
                await asyncio.sleep(0.05)
        assert reply.ok, reply.error
        return reply.build

    async def wait_for(self, build_id: uuid.UUID, statuses: set[BuildStatus] = TERMINAL,
                       timeout: float = 90.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                view = await self.build(build_id)
                if view.status in statuses:
                    return view
                await asyncio.sleep(0.2)

    def of(self, build_id: uuid.UUID, subject: str | None = None) -> list[Observed]:
        key = str(build_id)
        return [e for e in self.events if (subject is None or e.subject == subject)
                and key in (str(e.data.get("build_id")), str(e.data.get("request_id")))]

    async def settle(self, build_id: uuid.UUID, subject: str, n: int = 1,
                     timeout: float = 15.0) -> list[Observed]:
        async with asyncio.timeout(timeout):
            while len(self.of(build_id, subject)) < n:
                await asyncio.sleep(0.05)
        return self.of(build_id, subject)


async def collect_log(nc: Any, build_id: uuid.UUID, into: list[tuple[float, LogChunk]]) -> Any:
    async def on_chunk(msg: Any) -> None:
        into.append((time.time(), LogChunk.model_validate_json(msg.data)))

    return await nc.jetstream().subscribe(f"log.build.{build_id}", cb=on_chunk,
                                          ordered_consumer=True)


async def start_lab(settings_factory: Any, nats_url: str, sshd: Any, unique: str, *,
                    with_builder: bool = True, builder_config: BuilderConfig | None = None
                    ) -> Lab:
    nc = await nats.connect(nats_url)
    lab = Lab(nc=nc, sshd=sshd, label=unique)
    # the test repositories are local ones on the build server: the admin allows file://
    settings = settings_factory(build_allowed_url_schemes=LOCAL_REPOS_ALLOWED)

    async def credentials(msg: Any) -> None:
        cmd = GetCredentials.model_validate_json(msg.data)
        view = lab.servers.get(cmd.resource_id)
        if view is None:
            reply = CredentialsReply(ok=False, error=ErrorInfo(
                code="not_found", message=f"no resource {cmd.resource_id}"))
        else:
            reply = CredentialsReply(ok=True, resource=view,
                                     private_key=SecretStr(sshd.private_key))
        await msg.respond(reveal_secrets_json(reply).encode())

    await nc.subscribe(GetCredentials.subject, cb=credentials)

    async def observe(msg: Any) -> None:
        lab.events.append(Observed(msg.subject, json.loads(msg.data), time.time()))

    scheduler = create_scheduler(settings, SchedulerConfig())
    await scheduler.start()  # creates the streams
    lab.services.append(scheduler)
    if with_builder:
        builder = create_builder(settings, builder_config or BuilderConfig(heartbeat_s=1.0))
        await builder.start()
        lab.services.append(builder)
    js = nc.jetstream()
    for subject in ("build.*", "artifact.*", "request.*", "policy.*"):
        await js.subscribe(subject, cb=observe, ordered_consumer=True,
                           deliver_policy=nats.js.api.DeliverPolicy.NEW)
    return lab


async def stop_lab(lab: Lab) -> None:
    js = lab.nc.jetstream()
    for server_id in list(lab.servers):  # leave no server of ours in the scheduler's pool
        await js.publish(ResourceRemoved.subject, ResourceRemoved(
            resource_id=server_id, kind=ResourceKind.BUILD_SERVER).model_dump_json().encode())
    await asyncio.sleep(0.3)
    for svc in reversed(lab.services):
        await svc.stop()
    await lab.nc.close()


@pytest.fixture
async def lab(settings_factory, nats_url, sshd, unique) -> AsyncIterator[Lab]:  # type: ignore[no-untyped-def]
    lab = await start_lab(settings_factory, nats_url, sshd, unique)
    try:
        yield lab
    finally:
        await stop_lab(lab)


def scheduler_db(lab: Lab) -> Any:
    return lab.services[0].db


# ---- tests ----------------------------------------------------------------------------


async def test_auto_build_streams_its_log_live_and_stores_verified_artifacts(lab: Lab, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "hello", SLOW_MAKEFILE)
    head = git(repo, "rev-parse", "HEAD")
    # work_dir "" = the user's home directory, as on a real server
    server = await lab.register(lab.server_view(f"bs-{lab.label}"), scheduler_db(lab))
    chunks: list[tuple[float, LogChunk]] = []
    reply = await lab.submit(repo_url=f"file://{repo}", ref="main", arch=Arch.X86_64,
                             artifacts=["hello", "*.txt"])
    assert reply.ok, reply.error
    assert reply.build_id is not None
    assert reply.position == 0 and reply.estimated_start_s == 0.0  # a free slot: placed now
    sub = await collect_log(lab.nc, reply.build_id, chunks)
    view = await lab.wait_for(reply.build_id)
    done_at = lab.of(reply.build_id, "build.succeeded")[0].at if view.status == BuildStatus.SUCCEEDED else time.time()
    await asyncio.sleep(0.5)
    await sub.unsubscribe()

    assert view.status == BuildStatus.SUCCEEDED, view.error
    assert view.commit == head
    assert view.server_name == server.name and len(view.attempts) == 1

    # the log: in order, complete, live (arrived while the build still ran), then eof
    seqs = [c.seq for _, c in chunks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    text = "".join(c.text for _, c in chunks)
    assert text.index("compiling at") < text.index("linked at") < text.index("build succeeded")
    assert chunks[-1][1].eof and not any(c.eof for _, c in chunks[:-1])
    compiling = next((at, c) for at, c in chunks if "compiling at" in c.text)
    printed = float(compiling[1].text.split("compiling at ", 1)[1].split()[0])
    latency = compiling[0] - printed
    print(f"\n[builder] log latency printed→received {latency * 1000:.0f} ms; "
          f"received {done_at - compiling[0]:.2f} s before build.succeeded")
    assert latency < 1.0
    assert compiling[0] < done_at - 1.0  # seen while make was still running

    # artifacts: in the object store, checksums right (computed here, independently)
    by_name = {a.name: a for a in view.artifacts}
    assert set(by_name) == {"hello", "out.txt"}
    store = await lab.nc.jetstream().object_store("artifacts")
    for artifact in view.artifacts:
        got = await store.get(artifact.object_name)
        assert artifact.object_name == f"{reply.build_id}/{artifact.name}"
        assert hashlib.sha256(got.data).hexdigest() == artifact.sha256
        assert len(got.data) == artifact.size
    assert by_name["out.txt"].sha256 == hashlib.sha256(b"labfleet artifact\n").hexdigest()

    listed = await lab.request(ListArtifacts(build_id=reply.build_id), ArtifactListReply)
    assert listed.ok and {a.sha256 for a in listed.artifacts} == {a.sha256 for a in view.artifacts}

    # the events: started, phases in order, artifacts, succeeded once, finished once
    await lab.settle(reply.build_id, "build.finished")
    phases = [e.data["phase"] for e in lab.of(reply.build_id, "build.progress")]
    assert phases == ["fetch", "compile", "collect", "upload"]
    assert len(lab.of(reply.build_id, "build.started")) == 1
    assert len(lab.of(reply.build_id, "artifact.stored")) == 2
    assert len(lab.of(reply.build_id, "build.succeeded")) == 1
    assert len(lab.of(reply.build_id, "build.allocated")) == 1
    decided = lab.of(reply.build_id, "policy.decided")[0].data
    assert decided["chosen"] == server.name and decided["candidates"]

    # nothing left running, the build directory removed, the mirror kept for next time
    # and the checkout too, cleaned: the commit's files and nothing the build made
    home = Path(os.path.expanduser("~"))
    build_dir = home / "labfleet" / "builds" / str(reply.build_id)
    await no_processes_left(str(build_dir))
    assert not build_dir.exists()
    key = hashlib.sha1(f"file://{repo}".encode()).hexdigest()
    mirror = home / "labfleet" / "mirrors" / key
    assert (mirror / "HEAD").exists()
    kept = home / "labfleet" / "trees" / key / str(reply.build_id)
    assert sorted(p.name for p in kept.iterdir()) == [".git", "Makefile", "main.c"]
    shutil.rmtree(kept.parent)
    shutil.rmtree(mirror)
    mirror.with_name(mirror.name + ".lock").unlink(missing_ok=True)


async def test_artifacts_by_commit_and_latest_successful_for_a_branch(lab: Lab, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "hello", QUICK_MAKEFILE)
    work = tmp_path / "work"
    await lab.register(lab.server_view(f"bs-{lab.label}", work_dir=str(work)), scheduler_db(lab))
    url = f"file://{repo}"
    first = await lab.submit(repo_url=url, ref="main", arch=Arch.X86_64, artifacts=["hello"])
    assert first.ok and first.build_id
    one = await lab.wait_for(first.build_id)
    assert one.status == BuildStatus.SUCCEEDED, one.error
    second_commit = commit(repo, QUICK_MAKEFILE, MAIN_C.replace("hello", "hi"), "second")
    second = await lab.submit(repo_url=url, ref="main", arch=Arch.X86_64, artifacts=["hello"])
    assert second.ok and second.build_id
    two = await lab.wait_for(second.build_id)
    assert two.status == BuildStatus.SUCCEEDED, two.error
    assert two.commit == second_commit != one.commit  # the mirror was fetched again
    # the second build took over the first one's cleaned checkout, at its own commit
    chunks: list[tuple[float, LogChunk]] = []
    sub = await collect_log(lab.nc, second.build_id, chunks)
    async with asyncio.timeout(10):
        while not any(c.eof for _, c in chunks):
            await asyncio.sleep(0.1)
    await sub.unsubscribe()
    assert f"reused the tree of build {first.build_id}" in "".join(c.text for _, c in chunks)

    latest = await lab.request(ListArtifacts(ref="main", arch=Arch.X86_64, latest=True,
                                             repo_url=url), ArtifactListReply)
    assert latest.ok and latest.build_id == second.build_id
    assert latest.artifacts[0].sha256 == two.artifacts[0].sha256
    by_commit = await lab.request(ListArtifacts(commit=one.commit[:10]), ArtifactListReply)
    assert by_commit.ok and by_commit.build_id == first.build_id
    assert by_commit.artifacts[0].sha256 == one.artifacts[0].sha256 != two.artifacts[0].sha256
    missing = await lab.request(ListArtifacts(ref="no-such-branch", latest=True),
                                ArtifactListReply)
    assert not missing.ok and missing.error.code == "not_found"
    nothing = await lab.request(ListArtifacts(), ArtifactListReply)
    assert not nothing.ok and nothing.error.code == "missing_selector"
    recent = await lab.request(ListBuilds(limit=50), BuildListReply)
    mine = {b.build_id: b for b in recent.builds if b.build_id in (first.build_id, second.build_id)}
    assert len(mine) == 2 and mine[second.build_id].artifacts == two.artifacts
    assert mine[first.build_id].attempts == one.attempts


async def test_compile_error_reports_the_compilers_message(lab: Lab, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "broken", QUICK_MAKEFILE,
                     main_c="int main(void) { return undeclared_thing; }\n")
    await lab.register(lab.server_view(f"bs-{lab.label}", work_dir=str(tmp_path / "work")),
                       scheduler_db(lab))
    reply = await lab.submit(repo_url=f"file://{repo}", arch=Arch.X86_64, artifacts=["hello"])
    assert reply.ok and reply.build_id
    view = await lab.wait_for(reply.build_id)
    assert view.status == BuildStatus.FAILED
    assert view.error is not None and view.error.code == "compile_failed"
    assert "undeclared_thing" in view.error.message and "error" in view.error.message
    assert any("main.c" in line for line in view.error.details["log_tail"])
    failed = await lab.settle(reply.build_id, "build.failed")
    assert failed[0].data["retryable"] is False
    await lab.settle(reply.build_id, "build.finished")
    assert len(lab.of(reply.build_id, "build.failed")) == 1


async def test_fetch_failure_and_unknown_ref_say_what_is_wrong(lab: Lab, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "hello", QUICK_MAKEFILE)
    await lab.register(lab.server_view(f"bs-{lab.label}", work_dir=str(tmp_path / "work")),
                       scheduler_db(lab))
    nowhere = await lab.submit(repo_url=str(tmp_path / "no-such-repo"), arch=Arch.X86_64)
    bad_ref = await lab.submit(repo_url=f"file://{repo}", ref="no-such-branch",
                               arch=Arch.X86_64)
    assert nowhere.ok and bad_ref.ok and nowhere.build_id and bad_ref.build_id
    v1 = await lab.wait_for(nowhere.build_id)
    assert v1.status == BuildStatus.FAILED and v1.error.code == "fetch_failed"
    assert "no-such-repo" in json.dumps(v1.error.details["log_tail"])
    v2 = await lab.wait_for(bad_ref.build_id)
    assert v2.status == BuildStatus.FAILED and v2.error.code == "ref_not_found"
    assert "no-such-branch" in v2.error.message


async def test_cancel_queued_at_once_and_running_leaves_no_process(lab: Lab, tmp_path: Path) -> None:
    sleep = nap(60, lab.label)
    repo = make_repo(tmp_path / "slow", NAP_MAKEFILE.format(seconds=sleep))
    work = tmp_path / "work"
    await lab.register(lab.server_view(f"bs-{lab.label}", work_dir=str(work)), scheduler_db(lab))
    running = await lab.submit(repo_url=f"file://{repo}", arch=Arch.X86_64)
    queued = await lab.submit(repo_url=f"file://{repo}", arch=Arch.X86_64)
    assert running.ok and queued.ok and running.build_id and queued.build_id
    assert queued.position == 1  # one slot, taken by the first
    await lab.settle(queued.build_id, "request.queued")
    async with asyncio.timeout(10):  # the builder's copy of the queue position
        while (await lab.build(queued.build_id)).position != 1:
            await asyncio.sleep(0.1)

    gone = await lab.request(CancelBuild(build_id=queued.build_id, reason="not needed"),
                             BuildReply)
    assert gone.ok and gone.build.status == BuildStatus.CANCELLED and not gone.build.attempts
    await lab.settle(queued.build_id, "build.cancelled")

    build_dir = str(work / "labfleet" / "builds" / str(running.build_id))
    async with asyncio.timeout(60):
        while not processes_of(f"sleep {sleep}"):
            await asyncio.sleep(0.2)
    assert any("make" in p for p in processes_of(build_dir))
    stopped = await lab.request(CancelBuild(build_id=running.build_id, reason="changed my mind"),
                                BuildReply)
    assert stopped.ok and stopped.build.status == BuildStatus.CANCELLED
    assert stopped.build.attempts[0]["outcome"] == "cancelled"
    assert processes_of(f"sleep {sleep}") == []
    assert not [p for p in processes_of(build_dir) if "make" in p]
    await no_processes_left(build_dir)
    cancelled = await lab.settle(running.build_id, "build.cancelled")
    assert cancelled[0].data["reason"] == "changed my mind"
    finished = await lab.settle(running.build_id, "build.finished")
    assert finished[0].data["status"] == "cancelled"
    again = await lab.request(CancelBuild(build_id=running.build_id), BuildReply)
    assert not again.ok and again.error.code == "already_finished"


async def test_lost_server_retries_on_another(lab: Lab, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "hello", QUICK_MAKEFILE)
    work = str(tmp_path / "work")
    # "aa-…" sorts first, so the tie-break sends the first attempt to the dead one
    dead = await lab.register(lab.server_view(f"aa-dead-{lab.label}", port=free_port(),
                                              work_dir=work), scheduler_db(lab))
    good = await lab.register(lab.server_view(f"bb-good-{lab.label}", work_dir=work),
                              scheduler_db(lab))
    reply = await lab.submit(repo_url=f"file://{repo}", arch=Arch.X86_64, artifacts=["hello"])
    assert reply.ok and reply.build_id
    view = await lab.wait_for(reply.build_id)
    assert view.status == BuildStatus.SUCCEEDED, view.error
    assert view.server_name == good.name
    outcomes = [(a["server_name"], a["outcome"]) for a in view.attempts]
    assert outcomes == [(dead.name, "lost"), (good.name, "succeeded")]
    assert view.attempts[0]["error"]["code"] == "connection_refused"
    allocations = [e.data for e in lab.of(reply.build_id, "build.allocated")]
    assert [(a["server_name"], a["attempt"]) for a in allocations] == [(dead.name, 1), (good.name, 2)]
    lost = lab.of(reply.build_id, "build.failed")
    assert len(lost) == 1 and lost[0].data["retryable"] is True


async def test_builder_killed_mid_compile_runs_a_next_attempt(settings_factory, nats_url, sshd, unique, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the builder process during make; a new one kills the orphaned make,
    records the attempt as interrupted, builds again: succeeded once, attempts == 2."""
    lab = await start_lab(settings_factory, nats_url, sshd, unique, with_builder=False)
    procs: list[subprocess.Popen[bytes]] = []
    settings = settings_factory(build_allowed_url_schemes=LOCAL_REPOS_ALLOWED)
    env = {**os.environ, "LABFLEET_NATS_URL": settings.nats_url,
           "LABFLEET_DATABASE_URL": settings.database_url,
           "LABFLEET_ACK_WAIT_S": str(settings.ack_wait_s),
           "LABFLEET_MAX_DELIVER": str(settings.max_deliver),
           "LABFLEET_REDELIVERY_BACKOFF_S": json.dumps(settings.redelivery_backoff_s),
           "LABFLEET_LOG_JSON": "false", "LABFLEET_BUILDER_HEARTBEAT_S": "1"}
    code = ("from labfleet.shared.service import run_service; "
            "from labfleet.builder.main import create; "
            "from labfleet.shared.settings import Settings; "
            "run_service('builder', create, Settings())")

    def start_builder(n: int) -> subprocess.Popen[bytes]:
        log_file = open(tmp_path / f"builder-{n}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        sleep = nap(4, unique)
        repo = make_repo(tmp_path / "slow", NAP_MAKEFILE.format(seconds=sleep))
        work = tmp_path / "work"
        await lab.register(lab.server_view(f"bs-{lab.label}", work_dir=str(work)),
                           scheduler_db(lab))
        first = start_builder(1)
        reply = await lab.submit(repo_url=f"file://{repo}", arch=Arch.X86_64, artifacts=["hello"])
        assert reply.ok and reply.build_id
        build_dir = str(work / "labfleet" / "builds" / str(reply.build_id))
        async with asyncio.timeout(60):
            while not processes_of(f"sleep {sleep}"):
                await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        orphans = processes_of(build_dir)
        assert any("make" in p for p in orphans), orphans  # make outlives its builder
        start_builder(2)
        view = await lab.wait_for(reply.build_id, timeout=120)
        assert view.status == BuildStatus.SUCCEEDED, view.error
        assert view.attempt == 2
        assert [a["outcome"] for a in view.attempts] == ["interrupted", "succeeded"]
        await lab.settle(reply.build_id, "build.finished")
        await asyncio.sleep(1.0)  # a duplicate would have arrived by now
        assert len(lab.of(reply.build_id, "build.succeeded")) == 1
        assert len(lab.of(reply.build_id, "build.finished")) == 1
        assert processes_of(f"sleep {sleep}") == []
        await no_processes_left(build_dir)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        await stop_lab(lab)
