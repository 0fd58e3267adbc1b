"""Chaos: every service SIGKILLed in turn, NATS and PostgreSQL restarted, mid-work.

``labfleet up`` runs the whole stack on its embedded defaults (its own data directory);
the emulated lab (its own, ``LABFLEET_CHAOS_LAB_DIR``: 2 build servers, 1 QEMU host) is
registered through the HTTP API as an admin would.  While a real kernel build (tinyconfig,
x86_64, the lab's initramfs built in) compiles on build1 and small C builds (``hello.git``)
run on build2, the builder is SIGKILLed, NATS and PostgreSQL are restarted (the
supervisor starts each again when it dies: ``Stack.revive``), then inventory, monitor and
scheduler are SIGKILLed; the kernel is then deployed as an environment on the QEMU host
and the deployer is SIGKILLed while it deploys, then alerter and gateway while the VM
runs and another build is in flight.

Afterwards every build and the environment reached exactly one final state (one terminal
event each on the bus, the same as the API says), attempts are counted as they happened
(an interrupted attempt is one attempt, shown as such), and nothing is left: no ``make``
of these builds, no libvirt domain, no open reservation, no process of a killed service.

Each recovery time is printed as a JSON line (``{"chaos": ...}``): from the SIGKILL to the
restarted service answering its ping; after a NATS or PostgreSQL restart, until every
service answers again and the API reads through the database again.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import psutil
import pytest

from labfleet.cli.datadir import RunFiles
from labfleet.cli.health import ping_all, resolve_nats
from labfleet.embedded.ports import free_port
from tests.lab.conftest import _missing
from tests.lab.test_deploy_qemu import lab_domains
from tests.lab.test_kernel_builds import builtin_initramfs, lab_fragment

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

CHAOS_LAB_DIR = os.environ.get("LABFLEET_CHAOS_LAB_DIR", "/var/lib/labfleet-lab-chaos")
SERVICES = ("inventory", "monitor", "scheduler", "builder", "deployer", "alerter", "gateway")
TERMINAL_BUILD = {"succeeded", "failed", "cancelled"}
TERMINAL_SUBJECTS = {"build.succeeded", "build.failed", "build.cancelled"}


def report(**fields: Any) -> None:
    """One measurement, as a JSON line in the test's output."""
    print(json.dumps({"chaos": fields.pop("what"), **fields}), flush=True)


@pytest.fixture(scope="module")
def chaos_lab() -> Iterator[dict[str, Any]]:
    reason = _missing()
    if reason:
        print(f"\n[labfleet tests] chaos tests skipped: {reason}")
        pytest.skip(reason)
    from labfleet.lab import gitrepos
    from labfleet.lab import lab as labmod
    from labfleet.lab.images import build_all
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState

    paths = LabPaths.from_env(CHAOS_LAB_DIR)
    say = lambda m: print(f"[lab] {m}")  # noqa: E731
    was_up = LabState.load(paths.state_file) is not None
    images = build_all(paths, say, ["x86_64"])
    gitrepos.ensure_linux(paths, say)
    labmod.up(labmod.LabSpec(build_servers=2, qemu_hosts=1, boards=0, missing_toolchains={}),
              paths, say=say)
    status = labmod.status(paths)
    status["images"] = {k: v.to_json() for k, v in images.items()}
    yield status
    if not was_up:
        labmod.down(paths, say=say)


@dataclass
class Stack:
    """A running ``labfleet up`` and the ways in: its API, its NATS (as the operator)."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    api: httpx.AsyncClient
    nats_url: str = ""
    run: RunFiles = field(init=False)

    def __post_init__(self) -> None:
        self.run = RunFiles(self.data_dir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        assert self.proc.poll() is None, f"labfleet up exited:\n{self.log()[-4000:]}"

    async def call(self, method: str, path: str, timeout: float = 90.0,
                   **kwargs: Any) -> httpx.Response:
        """An API call, repeated while the gateway is down or restarting."""
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            try:
                r = await self.api.request(method, path, **kwargs)
                if r.status_code not in (502, 503, 504):
                    return r
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{method} {path}: no answer in {timeout} s"
            await asyncio.sleep(0.3)

    async def get(self, path: str) -> Any:
        r = await self.call("GET", path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()

    async def pongs(self, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
        try:
            return await ping_all(self.nats_url, list(names), timeout=1.0)
        except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
            return {n: str(exc) for n in names}


@pytest.fixture
async def stack(chaos_lab: dict[str, Any], tmp_path: Path) -> AsyncIterator[Stack]:
    # the data outside pytest's temporary root, which pytest keeps at 0700: the embedded
    # PostgreSQL runs as an unprivileged user and is started again in the middle of the
    # test; the supervisor's log stays with pytest's temporary files
    data_root = Path(tempfile.mkdtemp(prefix="labfleet-chaos-test-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    env.update(LABFLEET_MONITOR_INTERVAL_S="1", LABFLEET_LOG_JSON="false",
               LABFLEET_ACK_WAIT_S="10", LABFLEET_BUILD_MIN_DISK_GB="1",
               LABFLEET_DISK_WARNING_GB="1", LABFLEET_LAB_DIR=CHAOS_LAB_DIR)
    data_dir = data_root / "data"
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labfleet.cli.main", "up", "--data-dir", str(data_dir),
             "--port", str(port), "--grace", "10"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
    s = Stack(proc=proc, data_dir=data_dir, log_path=log_path, api=api)
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in s.log():
            s.alive()
            assert time.monotonic() < deadline, s.log()[-4000:]
            await asyncio.sleep(0.5)
        creds = dict(line.split(": ", 1) for line in
                     (data_dir / "admin-credentials").read_text().splitlines() if ": " in line)
        api.headers["Authorization"] = f"Bearer {creds['api_token']}"
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LABFLEET_")}
        try:
            url, _ = resolve_nats(data_dir)
        finally:
            os.environ.update(saved)
        assert url
        s.nats_url = url
        yield s
    finally:
        await api.aclose()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(f"\n[chaos] supervisor log (last lines):\n{s.log()[-6000:]}")
        print(f"[chaos] the whole log: {log_path}")
        shutil.rmtree(data_root, ignore_errors=True)


# ---- the pieces of the scenario -------------------------------------------------------


async def register(s: Stack, lab: dict[str, Any]) -> dict[str, str]:
    """Every lab host through the API; their ids by name once they are online."""
    from labfleet.lab.api import registration_payloads

    for path, body in registration_payloads(lab):
        if path not in ("/api/v1/build-servers", "/api/v1/qemu-hosts"):
            continue  # the lab's flash station: no board is part of this test
        r = await s.call("POST", path, json=body)
        assert r.status_code == 201, (path, r.status_code, r.text[:500])
    async with asyncio.timeout(120):
        while True:
            servers = (await s.get("/api/v1/build-servers"))["items"]
            if len(servers) == 2 and all(x["status"] == "online" for x in servers):
                break
            await asyncio.sleep(1)
    hosts = await s.get("/api/v1/qemu-hosts")
    hosts = hosts["items"] if isinstance(hosts, dict) else hosts
    return {x["name"]: x["id"] for x in [*servers, *hosts]}


async def submit(s: Stack, **spec: Any) -> str:
    r = await s.call("POST", "/api/v1/builds", json=spec)
    assert r.status_code == 202, r.text[:500]
    return str(r.json()["id"])


def hello(server: str) -> dict[str, Any]:
    return {"repo_url": HELLO_URL[0], "ref": "main", "arch": "x86_64", "server": server,
            "artifacts": ["hello"], "make_targets": ["hello"]}


HELLO_URL: list[str] = []


async def kill_and_time(s: Stack, name: str, during: str) -> float:
    """SIGKILL the service; seconds until its restarted instance answers the ping."""
    before = (await s.pongs([name]))[name]
    assert not isinstance(before, str), f"{name} does not answer before the kill: {before}"
    pid = s.run.read_pid(name)
    assert pid is not None
    group = os.getpgid(pid)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while True:
        pong = (await s.pongs([name]))[name]
        if not isinstance(pong, str) and pong.instance != before.instance:
            break
        assert time.monotonic() - started < 90, f"{name} did not come back: {pong}"
        s.alive()
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    new_pid = s.run.read_pid(name)
    assert new_pid is not None and new_pid != pid
    # nothing of the killed instance is left (its own helpers, e.g. OpenSSH masters)
    left = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == group]
    assert not left, f"processes of the killed {name} (group {group}) are left: {left}"
    report(what="sigkill", service=name, during=during, recovery_s=round(took, 2),
           old_pid=pid, new_pid=new_pid)
    return took


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def all_answer(s: Stack, since: float, timeout: float = 120.0) -> float:
    async with asyncio.timeout(timeout):
        while True:
            pongs = await s.pongs(SERVICES)
            if not any(isinstance(p, str) for p in pongs.values()):
                return time.monotonic() - since
            await asyncio.sleep(0.2)


async def restart_nats(s: Stack, server_ids: dict[str, str], during: str) -> None:
    pid = s.run.read_pid("nats-server")
    assert pid is not None
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # stopped as an admin stops it; the supervisor starts it
    async with asyncio.timeout(30):  # gone (not still draining) before anything is timed
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.05)
        while s.run.read_pid("nats-server") in (None, pid):
            await asyncio.sleep(0.05)
    wall = time.time()
    back = time.monotonic() - started
    answered = await all_answer(s, started)
    # the monitor writes its (memory-stored, so lost) samples bucket again: a sample newer
    # than the restart shows on a server's page
    build1 = server_ids["build1"]
    async with asyncio.timeout(60):
        while True:
            detail = await s.get(f"/api/v1/build-servers/{build1}")
            at = (detail.get("sample") or {}).get("at")
            if at and _epoch(at) > wall:
                break
            await asyncio.sleep(0.5)
    report(what="restart", server="nats", during=during, server_back_s=round(back, 2),
           all_answer_s=round(answered, 2),
           fresh_sample_s=round(time.monotonic() - started, 2))


async def restart_postgres(s: Stack, during: str) -> None:
    pid_file = s.data_dir / "postgres" / "pgdata" / "postmaster.pid"
    pid = int(pid_file.read_text().split()[0])
    started = time.monotonic()
    os.kill(pid, signal.SIGINT)  # a fast shutdown (pg_ctl stop -m fast)
    async with asyncio.timeout(60):
        while psutil.pid_exists(pid):
            await asyncio.sleep(0.1)
    answered = await all_answer(s, started)
    async with asyncio.timeout(120):  # reads through the database again, both services
        while True:
            builds = await s.call("GET", "/api/v1/builds")
            envs = await s.call("GET", "/api/v1/environments")
            if builds.status_code == 200 and envs.status_code == 200:
                break
            await asyncio.sleep(0.3)
    report(what="restart", server="postgres", during=during, all_answer_s=round(answered, 2),
           database_reads_s=round(time.monotonic() - started, 2))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


async def build_view(s: Stack, build_id: str) -> dict[str, Any]:
    return await s.get(f"/api/v1/builds/{build_id}")


async def until_phase(s: Stack, build_id: str, phase: str, timeout: float = 300.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            v = await build_view(s, build_id)
            assert v["status"] not in TERMINAL_BUILD, v
            if v["phase"] == phase and v["status"] == "running":
                return
            await asyncio.sleep(0.5)


async def finished(s: Stack, build_id: str, timeout: float = 900.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            v = await build_view(s, build_id)
            if v["status"] in TERMINAL_BUILD:
                return v
            await asyncio.sleep(1.0)


async def env_view(s: Stack, env_id: str) -> dict[str, Any]:
    return await s.get(f"/api/v1/environments/{env_id}")


async def events(s: Stack, subjects: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every stored event on these subjects, from the streams themselves."""
    nc = await nats.connect(s.nats_url)
    out = []
    try:
        js = nc.jetstream()
        for subject in subjects:
            sub = await js.subscribe(subject, ordered_consumer=True)
            try:
                while True:
                    msg = await sub.next_msg(timeout=2.0)
                    out.append((msg.subject, json.loads(msg.data)))
                    if msg.metadata.num_pending == 0:
                        break
            except nats.errors.TimeoutError:
                pass
            finally:
                await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def orphan_makes(build_ids: list[str]) -> list[str]:
    """``make`` processes (on the machine: the lab's hosts share its pid space) working in
    one of these builds' directories."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] != "make":
                continue
            where = p.cwd() + " " + " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(b in where for b in build_ids):
            found.append(f"{p.pid}: {where}")
    return found


async def open_reservations(s: Stack, build_ids: list[str], env_ids: list[str]) -> list[Any]:
    import asyncpg

    url = s.run.read_endpoints()["database_url"]
    conn = await asyncpg.connect(url)
    try:
        builds = await conn.fetch(
            "SELECT build_id, status FROM scheduler.build_queue WHERE build_id = ANY($1::uuid[]) "
            "AND status <> 'finished'", build_ids)
        envs = await conn.fetch(
            "SELECT env_id, status FROM scheduler.env_requests WHERE env_id = ANY($1::uuid[]) "
            "AND status NOT IN ('released', 'rejected')", env_ids)
    finally:
        await conn.close()
    return [dict(r) for r in [*builds, *envs]]


# ---- the test ---------------------------------------------------------------------------


async def test_every_service_killed_and_the_servers_restarted_mid_work(
        stack: Stack, chaos_lab: dict[str, Any]) -> None:
    s, lab = stack, chaos_lab
    started = time.monotonic()
    HELLO_URL[:] = [lab["git"]["url"] + "hello.git"]
    ids = await register(s, lab)
    initramfs = builtin_initramfs(lab["images"]["x86_64"]["initrd"])
    kernel = await submit(
        s, repo_url=lab["git"]["url"] + "linux.git", ref="main", arch="x86_64",
        config="tinyconfig", server="build1",
        config_options=[*lab_fragment("x86_64"), f'CONFIG_INITRAMFS_SOURCE="{initramfs}"'])
    builds = [kernel, await submit(s, **hello("build2"))]
    recovery: dict[str, float] = {}

    # during the kernel's compile: the builder, then the servers, then the others
    await until_phase(s, kernel, "compile")
    recovery["builder"] = await kill_and_time(s, "builder", "kernel compile (attempt 1)")
    builds.append(await submit(s, **hello("build2")))
    await until_phase(s, kernel, "compile")  # attempt 2 on its way
    await asyncio.sleep(5)
    await restart_nats(s, ids, "kernel compile")
    builds.append(await submit(s, **hello("build2")))
    await asyncio.sleep(3)
    await restart_postgres(s, "kernel compile")
    builds.append(await submit(s, **hello("build2")))
    for name in ("inventory", "monitor", "scheduler"):
        await asyncio.sleep(3)
        recovery[name] = await kill_and_time(s, name, "kernel compile")
        builds.append(await submit(s, **hello("build2")))
    k = await finished(s, kernel)
    assert k["status"] == "succeeded", (k["error"], k["attempts"])

    # the kernel deployed on the QEMU host; the deployer killed while it deploys
    r = await s.call("POST", "/api/v1/environments", json={
        "arch": "x86_64", "artifacts": {"build_id": kernel}, "host": "qemu1",
        "memory_mb": 256, "boot_timeout_s": 240})
    assert r.status_code == 202, r.text[:500]
    env_id = str(r.json()["id"])
    async with asyncio.timeout(120):
        while (await env_view(s, env_id))["status"] not in ("deploying", "booting"):
            await asyncio.sleep(0.1)
    recovery["deployer"] = await kill_and_time(s, "deployer", "environment deploying")
    builds.append(await submit(s, **hello("build1")))
    async with asyncio.timeout(300):
        while (env := await env_view(s, env_id))["status"] not in ("running", "failed"):
            await asyncio.sleep(0.5)
    assert env["status"] == "running", (env["error"], env["deployments"])
    for name in ("alerter", "gateway"):
        builds.append(await submit(s, **hello("build2")))
        recovery[name] = await kill_and_time(s, name, "environment running, hello build")

    # ---- every build and the environment reached one final state --------------------------
    views = {b: await finished(s, b, timeout=300) for b in builds}
    stored = await events(s, ["build.started", *TERMINAL_SUBJECTS])
    for b, v in views.items():
        assert v["status"] == "succeeded", (b, v["error"], v["attempts"])
        terminal = [subj for subj, d in stored if subj in TERMINAL_SUBJECTS and d["build_id"] == b]
        assert terminal == ["build.succeeded"], (b, terminal)
        # attempts as they happened: numbered from 1, each one started once, the last the
        # one that succeeded, every earlier one closed as interrupted or lost
        numbers = [a["attempt"] for a in v["attempts"]]
        assert numbers == list(range(1, len(numbers) + 1)) and v["attempt"] == numbers[-1], v
        starts = sorted(d["attempt"] for subj, d in stored
                        if subj == "build.started" and d["build_id"] == b)
        assert starts == numbers, (b, starts, v["attempts"])
        assert v["attempts"][-1]["outcome"] == "succeeded", v["attempts"]
        assert all(a["outcome"] in ("interrupted", "lost") for a in v["attempts"][:-1]), v
    # the builder kill costs one attempt; restarting NATS or PostgreSQL mid-compile may cost
    # one more (an attempt that could not report its heartbeat is handed over), which the
    # checks above show was recorded as it happened
    assert 2 <= len(views[kernel]["attempts"]) <= 3, views[kernel]["attempts"]
    report(what="builds", count=len(views),
           attempts={b[:8]: len(v["attempts"]) for b, v in views.items()})

    dep = env["deployments"][-1]
    deploy_started = [d for subj, d in await events(s, ["deploy.started"])
                      if d["env_id"] == env_id and d["deployment"] == dep["number"]]
    assert dep["attempts"] == len(deploy_started) == 2, (dep, deploy_started)
    r = await s.call("POST", f"/api/v1/environments/{env_id}/release")
    assert r.status_code == 200, r.text[:500]
    async with asyncio.timeout(60):
        while (env := await env_view(s, env_id))["status"] != "released":
            await asyncio.sleep(0.3)
    finals = [d for subj, d in await events(s, ["env.released"]) if d["env_id"] == env_id]
    assert len(finals) == 1, finals

    # ---- nothing left --------------------------------------------------------------------
    assert not [n for n in lab_domains(lab, "qemu1") if n.startswith("labfleet-")]
    assert not orphan_makes(builds)
    assert not await open_reservations(s, builds, [env_id])
    # nothing given up on: no message of any consumer went to the dead-letter stream
    dead = await events(s, ["deadletter.>"])
    assert not dead, [(subj, d.get("error")) for subj, d in dead]
    report(what="recovery", seconds={k: round(v, 2) for k, v in recovery.items()},
           total_s=round(time.monotonic() - started, 1))
