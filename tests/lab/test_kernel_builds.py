"""Real Linux kernels built on the emulated lab's build servers, then booted under QEMU.

Everything is the real thing: inventory registers the lab's build servers over SSH (host
keys pinned), the monitor reports them online, the scheduler places each build on the
server its spec names, and the builder fetches the lab's kernel git mirror (Debian's
linux-source as one commit, served by ``git daemon``; prepared once and cached, so no run
re-extracts the tarball) into its per-server mirror, configures ``tinyconfig`` plus the
options the lab's own boot kernels use, compiles with ``make -j<cores>`` and stores the
image, ``.config`` and metadata in the object store.  The images are fetched back,
checked against their SHA-256 and booted with the lab's initramfs under QEMU (TCG) until
the init's marker shows on the console.  The main test goes the whole way a developer
goes: x86_64, arm64 and riscv64 kernels (the lab's initramfs built into each image) are
deployed as environments by the scheduler and deployer to the lab's QEMU host over
``qemu+ssh``, their boot verified from the console, and released (no domain left).

The lab is this module's own (``LABFLEET_KBUILD_LAB_DIR``, default
``/var/lib/labfleet-lab-kbuild``; 2 build servers), brought down at the end if this
module brought it up.  A tinyconfig build takes about 1.5–3 minutes on 2 cores.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
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
from cryptography.fernet import Fernet
from pydantic import SecretStr

from labfleet.builder.main import create as create_builder
from labfleet.deployer.main import create as create_deployer
from labfleet.inventory.main import create as create_inventory
from labfleet.monitor.main import create as create_monitor
from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.build import (
    BuildPhase,
    BuildReply,
    BuildSpec,
    BuildStatus,
    GetBuild,
    LogChunk,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.env import (
    ArtifactSelector,
    CreateEnv,
    CreateEnvReply,
    DeployReply,
    EnvReply,
    EnvSpec,
    EnvStatus,
    GetEnv,
    ReleaseEnv,
)
from labfleet.shared.events.resource import (
    Arch,
    RegisterBuildServer,
    RegisterQemuHost,
    RegistrationReply,
    RemoveResource,
    ResourceReply,
    ResourceView,
)
from labfleet.shared.service import Service
from tests.lab.conftest import _missing

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

KBUILD_LAB_DIR = os.environ.get("LABFLEET_KBUILD_LAB_DIR", "/var/lib/labfleet-lab-kbuild")
TERMINAL = {BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED}
BUILD_TIMEOUT_S = 1200.0
QEMU = {Arch.X86_64: ["qemu-system-x86_64", "-M", "pc"],
        Arch.ARM64: ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53"]}
CONSOLE = {Arch.X86_64: "ttyS0", Arch.ARM64: "ttyAMA0"}
IMAGE = {Arch.X86_64: "bzImage", Arch.ARM64: "Image", Arch.RISCV64: "Image"}
MACHINE = {Arch.X86_64: "x86_64", Arch.ARM64: "aarch64", Arch.RISCV64: "riscv64"}
ARCHS = ("x86_64", "arm64", "riscv64")


def lab_fragment(arch: str) -> list[str]:
    """The options the lab's boot kernels add to tinyconfig (serial console, initramfs,
    ELF, poweroff …): the same fragment, given to the build as inline options."""
    from labfleet.lab.images import GUEST

    lines = []
    for name in ("common.config", f"{arch}.config"):
        for line in (GUEST / name).read_text().splitlines():
            if line.startswith("CONFIG_"):
                lines.append(line.strip())
    return lines


def builtin_initramfs(initrd_gz: str) -> Path:
    """The lab's initramfs as a plain ``.cpio`` beside it (the kernel's build takes an
    uncompressed archive as it is), in the image cache, which the lab's hosts see."""
    import gzip

    src = Path(initrd_gz)
    out = src.with_name(src.name.removesuffix(".gz"))
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_bytes(gzip.decompress(src.read_bytes()))
        tmp.chmod(0o644)
        tmp.replace(out)
    return out


@pytest.fixture(scope="module")
def kbuild_lab() -> Any:
    reason = _missing()
    if reason:
        print(f"\n[labfleet tests] kernel build lab tests skipped: {reason}")
        pytest.skip(reason)
    from labfleet.lab import gitrepos
    from labfleet.lab import lab as labmod
    from labfleet.lab.images import build_all
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState

    paths = LabPaths.from_env(KBUILD_LAB_DIR)
    say = lambda m: print(f"[lab] {m}")  # noqa: E731
    was_up = LabState.load(paths.state_file) is not None
    images = build_all(paths, say, list(ARCHS))  # the initramfs images (cached)
    gitrepos.ensure_linux(paths, say)  # the kernel mirror, made once per machine
    labmod.up(labmod.LabSpec(build_servers=2, qemu_hosts=1, boards=0,
                             missing_toolchains={}), paths, say=say)
    status = labmod.status(paths)
    status["images"] = {k: v.to_json() for k, v in images.items()}
    yield status
    if not was_up:
        labmod.down(paths, say=say)


@dataclass
class Fleet:
    nc: Any
    lab: dict[str, Any]
    label: str
    services: list[Service] = field(default_factory=list)
    servers: dict[str, ResourceView] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)

    qemu_hosts: dict[str, ResourceView] = field(default_factory=dict)

    @property
    def scheduler_db(self) -> Any:
        return self.services[2].db

    async def request(self, command: Any, reply_type: Any, timeout: float = 30.0) -> Any:
        msg = await self.nc.request(command.subject, reveal_secrets_json(command).encode(),
                                    timeout=timeout)
        return reply_type.model_validate_json(msg.data)

    async def _register(self, name: str, command: Any, **fields: Any) -> ResourceView:
        """Register one of the lab's hosts (its pinned key and this test's label)."""
        h = next(h for h in self.lab["hosts"] if h["name"] == name)
        cmd = command(
            hostname=f"{name}-{self.label}", address=h["address"], ssh_port=h["ssh_port"],
            username=h["user"], private_key=SecretStr(Path(h["key_path"]).read_text()),
            expected_host_key_fingerprint=h["fingerprint"], labels={"kbuild": self.label},
            **fields)
        reply = await self.request(cmd, RegistrationReply, timeout=90)
        assert reply.ok and reply.resource is not None, reply.error
        return reply.resource

    async def register(self, name: str) -> ResourceView:
        self.servers[name] = await self._register(
            name, RegisterBuildServer, architectures=[Arch.X86_64, Arch.ARM64, Arch.RISCV64])
        return self.servers[name]

    async def register_qemu_host(self, name: str) -> ResourceView:
        self.qemu_hosts[name] = await self._register(
            name, RegisterQemuHost,
            guest_architectures=[Arch.X86_64, Arch.ARM64, Arch.RISCV64])
        return self.qemu_hosts[name]

    async def env_settled(self, env_id: uuid.UUID, timeout: float = 300.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                reply = await self.request(GetEnv(env_id=env_id), EnvReply)
                if reply.ok and reply.env.status in (EnvStatus.RUNNING, EnvStatus.FAILED):
                    return reply.env
                await asyncio.sleep(0.3)

    async def online(self, view: ResourceView, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while not await self.scheduler_db.fetchval(
                    "SELECT true FROM build_servers JOIN server_health USING (server_id) "
                    "WHERE server_id = $1 AND status = 'online'", view.resource_id):
                await asyncio.sleep(0.2)

    async def submit(self, **spec: Any) -> uuid.UUID:
        spec.setdefault("labels", {"kbuild": self.label})
        reply = await self.request(SubmitBuild(spec=BuildSpec(**spec), requested_by="test"),
                                   SubmitBuildReply)
        assert reply.ok and reply.build_id is not None, reply.error
        return reply.build_id

    async def view(self, build_id: uuid.UUID) -> Any:
        while True:
            try:
                reply = await self.request(GetBuild(build_id=build_id), BuildReply)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.2)
                continue
            if reply.ok:
                return reply.build
            assert reply.error.code == "not_found", reply.error
            await asyncio.sleep(0.1)

    async def finished(self, build_id: uuid.UUID, timeout: float = BUILD_TIMEOUT_S) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                view = await self.view(build_id)
                if view.status in TERMINAL:
                    return view
                await asyncio.sleep(1.0)

    def of(self, build_id: uuid.UUID, subject: str) -> list[dict[str, Any]]:
        return [d for s, d, _ in self.events
                if s == subject and d.get("build_id") == str(build_id)]

    async def log_text(self, build_id: uuid.UUID) -> str:
        return await chunked_text(self.nc, f"log.build.{build_id}", LogChunk, idle_s=2.0)


async def chunked_text(nc: Any, subject: str, model: Any, idle_s: float) -> str:
    """A log published in numbered chunks (a build's, a console), read to its end (the
    chunk marked ``eof``) or until nothing comes for ``idle_s``."""
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    text = []
    try:
        while True:
            chunk = model.model_validate_json((await sub.next_msg(timeout=idle_s)).data)
            text.append(chunk.text)
            if chunk.eof:
                break
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return "".join(text)


@pytest.fixture
async def fleet(kbuild_lab, settings_factory, nats_url, unique) -> AsyncIterator[Fleet]:  # type: ignore[no-untyped-def]
    key = Fernet.generate_key().decode()
    settings = settings_factory(credential_key=key, monitor_interval_s=2.0,
                                build_min_disk_gb=1.0, disk_warning_gb=1.0, ack_wait_s=30.0)
    nc = await nats.connect(nats_url)
    f = Fleet(nc=nc, lab=kbuild_lab, label=unique)
    for create in (create_inventory, create_monitor, create_scheduler, create_builder,
                   create_deployer):
        svc = create(settings)
        await svc.start()
        f.services.append(svc)

    async def observe(msg: Any) -> None:
        f.events.append((msg.subject, json.loads(msg.data), time.time()))

    for subject in ("build.*", "artifact.*"):
        await nc.jetstream().subscribe(subject, cb=observe, ordered_consumer=True,
                                       deliver_policy=nats.js.api.DeliverPolicy.NEW)
    try:
        yield f
    finally:
        for view in [*f.servers.values(), *f.qemu_hosts.values()]:
            await f.request(RemoveResource(resource_id=view.resource_id, requested_by="test"),
                            ResourceReply)
        await asyncio.sleep(0.3)
        for svc in reversed(f.services):
            await svc.stop()
        await nc.close()


async def fetch_artifact(nc: Any, artifact: Any, into: Path) -> tuple[Path, dict[str, Any]]:
    """The artifact from the object store, its SHA-256 checked here; and its headers."""
    store = await nc.jetstream().object_store(artifact.bucket)
    got = await store.get(artifact.object_name)
    assert hashlib.sha256(got.data).hexdigest() == artifact.sha256
    path = into / artifact.name.replace("/", "_")
    path.write_bytes(got.data)
    return path, dict(got.info.headers or {})


async def boot(arch: Arch, kernel: Path, initrd: str, timeout: float = 90.0) -> str:
    """Boot under QEMU (TCG) until the init's marker or a panic; the console text."""
    argv = [*QEMU[arch], "-accel", "tcg", "-m", "256", "-nographic", "-monitor", "none",
            "-no-reboot", "-kernel", str(kernel), "-initrd", initrd,
            "-append", f"console={CONSOLE[arch]} panic=-1"]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    console = b""
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None
            while b"LABFLEET-BOOT-OK" not in console and b"Kernel panic" not in console:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                console += chunk
            # the rest of the marker's line
            while b"\n" not in console.split(b"LABFLEET-BOOT-OK", 1)[-1]:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                console += chunk
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return console.decode(errors="replace")


# ---- tests ------------------------------------------------------------------------------


async def console_text(nc: Any, env_id: uuid.UUID) -> str:
    """The environment's console as the deployer published it, to its end."""
    from labfleet.shared.events.env import ConsoleChunk, console_subject

    return await chunked_text(nc, console_subject(env_id), ConsoleChunk, idle_s=3.0)


async def test_kernels_built_on_two_servers_deploy_and_boot_on_a_qemu_host(
        fleet: Fleet, tmp_path: Path) -> None:
    """x86_64, arm64 and riscv64 kernels built by the builder on two servers, then deployed
    by the deployer to the lab's QEMU host over qemu+ssh and booted to the init's marker."""
    from tests.lab.test_deploy_qemu import lab_domains

    git_url = fleet.lab["git"]["url"] + "linux.git"
    build1 = await fleet.register("build1")
    build2 = await fleet.register("build2")
    qemu1 = await fleet.register_qemu_host("qemu1")
    await fleet.online(build1)
    await fleet.online(build2)
    servers = {Arch.X86_64: build1, Arch.ARM64: build2, Arch.RISCV64: build1}
    started = time.monotonic()
    ids = {}
    for arch, server in servers.items():
        initramfs = builtin_initramfs(fleet.lab["images"][arch.value]["initrd"])
        ids[arch] = await fleet.submit(
            repo_url=git_url, ref="main", arch=arch, config="tinyconfig", server=server.name,
            config_options=[*lab_fragment(arch.value), f'CONFIG_INITRAMFS_SOURCE="{initramfs}"'])
    views = {arch: await fleet.finished(bid) for arch, bid in ids.items()}
    print(f"\n[kernel builds] three done in {time.monotonic() - started:.0f} s")
    for arch, view in views.items():
        assert view.status == BuildStatus.SUCCEEDED, (arch, view.error)
        assert view.server_name == servers[arch].name

    for arch, build_id in ids.items():
        view = views[arch]
        names = {a.name for a in view.artifacts}
        # tinyconfig has no modules and these configs no dtbs: image, config, System.map
        assert {IMAGE[arch], "config", "System.map"} <= names, names
        assert not any(n.startswith("modules") for n in names)
        succeeded = fleet.of(build_id, "build.succeeded")
        assert len(succeeded) == 1
        toolchain = succeeded[0]["toolchain"]
        assert "gcc" in toolchain, toolchain
        cross = {Arch.ARM64: "aarch64-linux-gnu-gcc", Arch.RISCV64: "riscv64-linux-gnu-gcc"}
        if arch in cross:
            assert cross[arch] in toolchain, toolchain
        image = next(a for a in view.artifacts if a.name == IMAGE[arch])
        meta = next(a for a in succeeded[0]["artifacts"] if a["name"] == IMAGE[arch])["metadata"]
        assert meta["toolchain"] == toolchain and meta["arch"] == arch.value
        assert meta["commit"] == view.commit and meta["server"] == view.server_name
        assert meta["repository"] == git_url and meta["config"] == "tinyconfig"

        _, headers = await fetch_artifact(fleet.nc, image, tmp_path)
        assert headers.get("Labfleet-Toolchain") in ([toolchain], toolchain)
        config, _ = await fetch_artifact(
            fleet.nc, next(a for a in view.artifacts if a.name == "config"), tmp_path)
        applied = set(config.read_text().splitlines())
        assert {o for o in lab_fragment(arch.value) if o.endswith("=y")} - applied <= {
            "CONFIG_ARM_PSCI_FW=y"}  # selected by arm64 itself; harmless either way
        assert any(line.startswith("CONFIG_INITRAMFS_SOURCE=\"/") for line in applied)

        phases = [e["phase"] for e in fleet.of(build_id, "build.progress")]
        firsts = list(dict.fromkeys(phases))
        assert firsts == ["fetch", "configure", "compile", "collect", "upload"], phases

    log = await fleet.log_text(ids[Arch.ARM64])
    assert "==> make tinyconfig" in log and "merge_config.sh" in log
    assert "ARCH=arm64" in log and "CROSS_COMPILE=aarch64-linux-gnu-" in log

    # each build deployed as an environment on the QEMU host, one after the other
    for arch, build_id in ids.items():
        spec = EnvSpec(arch=arch, artifacts=ArtifactSelector(build_id=build_id),
                       host=qemu1.name, memory_mb=256, boot_timeout_s=240)
        reply = await fleet.request(CreateEnv(spec=spec, requested_by="kernel-dev"),
                                    CreateEnvReply)
        assert reply.ok and reply.env_id is not None, reply.error
        # placed at once, or queued until the host's next sample shows room: its CPU is
        # this machine's, busy until a moment ago with the builds above
        assert reply.host_name == qemu1.name or (
            reply.status == EnvStatus.QUEUED and reply.warning), reply
        env = await fleet.env_settled(reply.env_id)
        assert env.status == EnvStatus.RUNNING, (arch, env.error, env.deployments)
        assert env.build_id == build_id and env.commit == views[arch].commit
        assert env.host_name == qemu1.name and env.vm_name
        console = await console_text(fleet.nc, reply.env_id)
        marker = next((line for line in console.splitlines() if "LABFLEET-BOOT-OK" in line),
                      None)
        assert marker is not None, console[-3000:]
        assert MACHINE[arch] in marker, marker
        print(f"[kernel builds] {arch.value} deployed on {qemu1.name}: {marker.strip()}")
        assert lab_domains(fleet.lab, "qemu1").get(env.vm_name) is True

        released = await fleet.request(ReleaseEnv(env_id=reply.env_id, requested_by="kernel-dev"),
                                       DeployReply, timeout=60)
        assert released.ok, released.error
        async with asyncio.timeout(30):
            while env.vm_name in lab_domains(fleet.lab, "qemu1"):
                await asyncio.sleep(0.2)


async def test_kernel_build_failures_name_their_cause(fleet: Fleet) -> None:
    git_url = fleet.lab["git"]["url"] + "linux.git"
    build2 = await fleet.register("build2")
    await fleet.online(build2)
    # VIRTIO_PCI needs PCI, which arm64's tinyconfig leaves off: Kconfig drops it silently
    dropped = await fleet.submit(repo_url=git_url, ref="main", arch=Arch.ARM64,
                                 config="tinyconfig", server=build2.name,
                                 config_options=["CONFIG_PRINTK=y", "CONFIG_VIRTIO_PCI=y"])
    missing_fragment = await fleet.submit(
        repo_url=git_url, ref="main", arch=Arch.ARM64, config="tinyconfig",
        server=build2.name, config_fragments=["kernel/configs/no-such.config"])
    bad_ref = await fleet.submit(repo_url=git_url, ref="v9.99-no-such-tag", arch=Arch.ARM64,
                                 config="tinyconfig", server=build2.name)

    v = await fleet.finished(dropped)
    assert v.status == BuildStatus.FAILED and v.error.code == "config_option_dropped", v.error
    assert "CONFIG_VIRTIO_PCI=y" in v.error.message and "CONFIG_PRINTK" not in v.error.message
    assert v.error.details["dropped"] and v.phase == BuildPhase.CONFIGURE

    v = await fleet.finished(missing_fragment)
    assert v.status == BuildStatus.FAILED and v.error.code == "configure_failed", v.error
    assert "no-such.config" in json.dumps(v.error.details["log_tail"])

    v = await fleet.finished(bad_ref)
    assert v.status == BuildStatus.FAILED and v.error.code == "ref_not_found", v.error
    assert "v9.99-no-such-tag" in v.error.message
    # the second and later builds on a server fetch into its mirror, they do not clone
    log = await fleet.log_text(bad_ref)
    assert "==> fetch" in log and "clone --mirror" not in log



# ---- TuxMake ----------------------------------------------------------------------------

TUXMAKE_WHEELS = Path("/var/cache/labfleet/wheels")
# a per-user install on the server, as a developer would make it (pip into a venv, the
# command linked into ~/.local/bin); the lab hosts have no network, so pip installs from
# wheels downloaded here once with the project's own pip
INSTALL_TUXMAKE = """set -e
python3 -m venv "$HOME/.local/tuxmake"
"$HOME/.local/tuxmake/bin/pip" install -q --no-index --find-links "$1" tuxmake
mkdir -p "$HOME/.local/bin"
ln -sf "$HOME/.local/tuxmake/bin/tuxmake" "$HOME/.local/bin/tuxmake"
"$HOME/.local/bin/tuxmake" --version
"""


def lab_ssh(lab: dict[str, Any], name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    h = next(h for h in lab["hosts"] if h["name"] == name)
    return subprocess.run(["ssh", "-F", lab["ssh_config"], f"{h['user']}@{h['address']}",
                           shlex.join(argv)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tuxmake_on_build1(kbuild_lab: dict[str, Any]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        wanted = version("tuxmake")
    except PackageNotFoundError:
        pytest.skip("tuxmake is not installed here (pip install -e '.[test]' installs it)")
    if not list(TUXMAKE_WHEELS.glob(f"tuxmake-{wanted}-*.whl")):
        TUXMAKE_WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"tuxmake=={wanted}", "-d", str(TUXMAKE_WHEELS)], check=True)
    done = lab_ssh(kbuild_lab, "build1", "sh", "-c", INSTALL_TUXMAKE, "install",
                   str(TUXMAKE_WHEELS))
    assert done.returncode == 0, done.stderr
    # and build2 has none, for the failure case
    lab_ssh(kbuild_lab, "build2", "rm", "-f", ".local/bin/tuxmake")
    return done.stdout.strip()


async def test_tuxmake_backend_builds_a_bootable_kernel_and_keeps_its_metadata(
        fleet: Fleet, tuxmake_on_build1: str, tmp_path: Path) -> None:
    git_url = fleet.lab["git"]["url"] + "linux.git"
    build1 = await fleet.register("build1")
    build2 = await fleet.register("build2")
    await fleet.online(build1)
    await fleet.online(build2)
    missing = await fleet.submit(repo_url=git_url, ref="main", arch=Arch.X86_64,
                                 config="tinyconfig", server=build2.name, backend="tuxmake")
    tux = await fleet.submit(repo_url=git_url, ref="main", arch=Arch.X86_64,
                             config="tinyconfig", server=build1.name, backend="tuxmake",
                             config_options=lab_fragment("x86_64"))
    v = await fleet.finished(missing)
    assert v.status == BuildStatus.FAILED and v.error.code == "tuxmake_missing", v.error
    assert build2.name in v.error.message

    view = await fleet.finished(tux)
    assert view.status == BuildStatus.SUCCEEDED, view.error
    names = {a.name for a in view.artifacts}
    assert {"bzImage", "metadata.json", "config"} <= names, names
    meta_file, _ = await fetch_artifact(
        fleet.nc, next(a for a in view.artifacts if a.name == "metadata.json"), tmp_path)
    tux_meta = json.loads(meta_file.read_text())
    assert tux_meta["build"]["target_arch"] == "x86_64"
    assert tux_meta["results"]["status"] == "PASS", tux_meta["results"]
    succeeded = fleet.of(tux, "build.succeeded")[0]
    image = next(a for a in succeeded["artifacts"] if a["name"] == "bzImage")
    assert image["metadata"]["backend"] == tuxmake_on_build1
    log = await fleet.log_text(tux)
    assert "tuxmake --runtime=null" in log or "tuxmake" in log
    phases = list(dict.fromkeys(e["phase"] for e in fleet.of(tux, "build.progress")))
    assert phases == ["fetch", "configure", "compile", "collect", "upload"], phases

    kernel, _ = await fetch_artifact(
        fleet.nc, next(a for a in view.artifacts if a.name == "bzImage"), tmp_path)
    console = await boot(Arch.X86_64, kernel, fleet.lab["images"]["x86_64"]["initrd"])
    assert "LABFLEET-BOOT-OK" in console, console[-3000:]


async def test_compile_progress_is_estimated_from_the_previous_build(fleet: Fleet) -> None:
    """The second build of the same tree/config/arch reports compile percentages measured
    against the lines the first one printed (any server's history counts)."""
    url = fleet.lab["git"]["url"] + "hello.git"
    build1 = await fleet.register("build1")
    build2 = await fleet.register("build2")
    await fleet.online(build1)
    await fleet.online(build2)
    first = await fleet.submit(repo_url=url, ref="main", arch=Arch.ARM64, server=build1.name,
                               artifacts=["hello"], make_targets=["hello"])
    assert (await fleet.finished(first, timeout=120)).status == BuildStatus.SUCCEEDED
    percents = [e["percent"] for e in fleet.of(first, "build.progress") if e["percent"]]
    assert percents == []  # nothing to compare the first build with
    second = await fleet.submit(repo_url=url, ref="main", arch=Arch.ARM64, server=build2.name,
                                artifacts=["hello"], make_targets=["hello"])
    assert (await fleet.finished(second, timeout=120)).status == BuildStatus.SUCCEEDED
    compile_events = [e for e in fleet.of(second, "build.progress") if e["phase"] == "compile"]
    percents = [e["percent"] for e in compile_events if e["percent"] is not None]
    assert percents and all(0 < p <= 99 for p in percents), compile_events
    log = await fleet.log_text(second)
    assert "the last such build printed" in log and str(first) in log
