"""Environment placement in the real scheduler (NATS, PostgreSQL): reservations under
concurrent requests, the utilization limit, explicit hosts with alternatives, the queue
with its estimate, and placement when capacity frees.

Inventory, monitor and builder are not part of this piece: the test publishes
``resource.registered`` / ``health.changed`` / samples itself and answers
``artifact.cmd.list`` / ``build.cmd.get`` with a small responder speaking the real
contracts (:class:`FleetDouble`, also used by the lab deployment tests).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import nats.js.api
import pytest
from pydantic import SecretStr

from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.build import (
    ArtifactInfo,
    ArtifactListReply,
    BuildReply,
    BuildSpec,
    BuildStatus,
    BuildView,
    GetBuild,
    ListArtifacts,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.env import (
    ArtifactSelector,
    CreateEnv,
    CreateEnvReply,
    EnvHostsReply,
    EnvReleased,
    EnvSpec,
    EnvStatus,
    ListEnvHosts,
)
from labfleet.shared.events.health import HealthChanged, HealthStatus, HostSample, HostSampled
from labfleet.shared.events.resource import (
    Arch,
    CredentialsReply,
    GetCredentials,
    GuestEmulator,
    KvmSupport,
    QemuHostCapabilities,
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceView,
    SshTarget,
)
from labfleet.shared.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Build:
    build_id: uuid.UUID
    commit: str
    arch: Arch
    artifacts: list[ArtifactInfo]


@dataclass
class FleetDouble:
    """Answers what inventory and the builder would, from what the test registered."""

    nc: Any
    hosts: dict[uuid.UUID, ResourceView] = field(default_factory=dict)
    private_key: str = ""
    builds: dict[uuid.UUID, Build] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)

    async def start(self) -> FleetDouble:
        self.subs.append(await self.nc.subscribe(GetCredentials.subject, cb=self._credentials))
        self.subs.append(await self.nc.subscribe(ListArtifacts.subject, cb=self._artifacts))
        self.subs.append(await self.nc.subscribe(GetBuild.subject, cb=self._build))
        js = self.nc.jetstream()
        for subject in ("env.*", "deploy.*", "request.*", "policy.*"):
            self.subs.append(await js.subscribe(
                subject, cb=self._observe, ordered_consumer=True,
                deliver_policy=nats.js.api.DeliverPolicy.NEW))
        return self

    async def _observe(self, msg: Any) -> None:
        self.events.append((msg.subject, json.loads(msg.data), time.time()))

    def of(self, env_id: uuid.UUID, subject: str) -> list[dict[str, Any]]:
        key = str(env_id)
        return [d for s, d, _ in self.events if s == subject
                and key in (str(d.get("env_id")), str(d.get("request_id")))]

    async def wait_event(self, env_id: uuid.UUID, subject: str, n: int = 1,
                         timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.of(env_id, subject)) < n:
                await asyncio.sleep(0.05)
        return self.of(env_id, subject)

    async def _respond(self, msg: Any, reply: Any) -> None:
        await msg.respond(reveal_secrets_json(reply).encode())

    async def _credentials(self, msg: Any) -> None:
        cmd = GetCredentials.model_validate_json(msg.data)
        view = self.hosts.get(cmd.resource_id)
        if view is None:
            await self._respond(msg, CredentialsReply(ok=False, error=ErrorInfo(
                code="not_found", message=f"no resource {cmd.resource_id}")))
            return
        await self._respond(msg, CredentialsReply(ok=True, resource=view,
                                                  private_key=SecretStr(self.private_key)))

    async def _artifacts(self, msg: Any) -> None:
        cmd = ListArtifacts.model_validate_json(msg.data)
        found = [b for b in self.builds.values()
                 if (cmd.build_id and b.build_id == cmd.build_id)
                 or (cmd.commit and b.commit.startswith(cmd.commit))
                 or (cmd.ref and cmd.ref == "main" and (cmd.arch is None or b.arch == cmd.arch))]
        if not found:
            await self._respond(msg, ArtifactListReply(ok=False, error=ErrorInfo(
                code="not_found", message="no succeeded build of that", field="build_id")))
            return
        b = found[-1]
        await self._respond(msg, ArtifactListReply(ok=True, build_id=b.build_id,
                                                   artifacts=b.artifacts))

    async def _build(self, msg: Any) -> None:
        cmd = GetBuild.model_validate_json(msg.data)
        b = self.builds[cmd.build_id]
        await self._respond(msg, BuildReply(ok=True, build=BuildView(
            build_id=b.build_id, spec=BuildSpec(repo_url="git://lab/linux.git", arch=b.arch),
            status=BuildStatus.SUCCEEDED, commit=b.commit, created_at=datetime.now(UTC),
            artifacts=b.artifacts)))

    def add_build(self, arch: Arch, names: tuple[str, ...] = ("bzImage", "initrd.cpio.gz"),
                  digests: tuple[str, ...] | None = None) -> Build:
        build_id = uuid.uuid4()
        digests = digests or tuple(uuid.uuid4().hex * 2 for _ in names)
        arts = [ArtifactInfo(name=n, size=1, sha256=d, object_name=f"{build_id}/{n}",
                             bucket="artifacts") for n, d in zip(names, digests, strict=True)]
        build = Build(build_id, uuid.uuid4().hex + "00000000", arch, arts)
        self.builds[build_id] = build
        return build

    async def register(self, view: ResourceView, scheduler_db: Any,
                       status: HealthStatus = HealthStatus.ONLINE) -> ResourceView:
        self.hosts[view.resource_id] = view
        js = self.nc.jetstream()
        await js.publish(ResourceRegistered.subject,
                         ResourceRegistered(resource=view).model_dump_json().encode())
        await js.publish(HealthChanged.subject, HealthChanged(
            resource_id=view.resource_id, kind=ResourceKind.QEMU_HOST, status=status,
            previous=HealthStatus.UNKNOWN).model_dump_json().encode())
        async with asyncio.timeout(15):
            while not await scheduler_db.fetchval(
                    "SELECT true FROM qemu_hosts WHERE host_id = $1 AND view IS NOT NULL "
                    "AND health = $2", view.resource_id, status.value):
                await asyncio.sleep(0.05)
        return view

    async def sample(self, host_id: uuid.UUID, cpu_pct: float, scheduler_db: Any) -> None:
        at = datetime.now(UTC)
        event = HostSampled(sample=HostSample(
            resource_id=host_id, kind=ResourceKind.QEMU_HOST, at=at, cpu_pct=cpu_pct,
            load1=0.0, cpu_cores=2, mem_total_mb=4096, mem_used_mb=1024, disk_total_gb=4.0,
            disk_free_gb=3.0))
        await self.nc.jetstream().publish(f"sample.qemu_host.{host_id}",
                                          event.model_dump_json().encode())
        async with asyncio.timeout(15):
            while not await scheduler_db.fetchval(
                    "SELECT true FROM qemu_hosts WHERE host_id = $1 AND cpu_pct = $2",
                    host_id, cpu_pct):
                await asyncio.sleep(0.05)

    async def request(self, command: Any, reply_type: Any, timeout: float = 30.0) -> Any:
        msg = await self.nc.request(command.subject, reveal_secrets_json(command).encode(),
                                    timeout=timeout)
        return reply_type.model_validate_json(msg.data)

    async def create(self, build: Build, **kw: Any) -> CreateEnvReply:
        kw.setdefault("arch", build.arch)
        spec = EnvSpec(artifacts=ArtifactSelector(build_id=build.build_id), **kw)
        return await self.request(CreateEnv(spec=spec, requested_by="test"), CreateEnvReply)

    async def stop(self) -> None:
        js = self.nc.jetstream()
        for host_id in list(self.hosts):  # leave no host of ours in the scheduler's pool
            await js.publish(ResourceRemoved.subject, ResourceRemoved(
                resource_id=host_id, kind=ResourceKind.QEMU_HOST).model_dump_json().encode())
        for sub in self.subs:
            await sub.unsubscribe()


def qemu_view(name: str, *, address: str = "127.0.0.1", port: int = 22, user: str = "lab",
              host_key: str = "ssh-ed25519 AAAA", vcpus: int = 4, memory_mb: int = 4096,
              image_dir: str = "/home/lab/images",
              guests: tuple[Arch, ...] = (Arch.X86_64, Arch.ARM64, Arch.RISCV64)) -> ResourceView:
    emulator = {Arch.X86_64: "x86_64", Arch.ARM64: "aarch64", Arch.RISCV64: "riscv64",
                Arch.ARM: "arm"}
    caps = QemuHostCapabilities(
        cpu_arch="x86_64", cpu_cores=vcpus, memory_mb=memory_mb + 1024, storage_total_gb=4.0,
        storage_free_gb=3.0, image_dir=image_dir, kvm=KvmSupport(usable=False, reason="TCG lab"),
        guests=[GuestEmulator(arch=a, emulator=f"/usr/bin/qemu-system-{emulator[a]}")
                for a in guests],
        libvirt_uri=f"qemu+ssh://{user}@{address}/system", allocatable_vcpus=vcpus,
        allocatable_memory_mb=memory_mb)
    return ResourceView(resource_id=uuid.uuid4(), kind=ResourceKind.QEMU_HOST, name=name,
                        ssh=SshTarget(address=address, port=port, username=user,
                                      host_key=host_key),
                        architectures=list(guests), qemu=caps)


@dataclass
class Stack:
    fleet: FleetDouble
    scheduler: Service
    services: list[Service]

    @property
    def sdb(self) -> Any:
        return self.scheduler.db


@pytest.fixture
async def stack(settings_factory, nats_url) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    scheduler = create_scheduler(settings_factory())
    await scheduler.start()
    fleet = await FleetDouble(nc).start()
    # the session's database outlives a test: start from no hosts and an empty queue
    # (an earlier test's resource.removed may still be on its way)
    await scheduler.db.execute("DELETE FROM qemu_hosts")
    await scheduler.db.execute("UPDATE env_requests SET status = 'released' "
                               "WHERE status IN ('queued', 'allocated')")
    try:
        yield Stack(fleet, scheduler, [scheduler])
    finally:
        await fleet.stop()
        await asyncio.sleep(0.3)
        await scheduler.stop()
        await nc.close()


async def test_concurrent_requests_never_overcommit_a_host(stack: Stack, unique: str) -> None:
    host = await stack.fleet.register(qemu_view(f"q-{unique}", vcpus=4, memory_mb=4096),
                                      stack.sdb)
    build = stack.fleet.add_build(Arch.X86_64)
    replies = await asyncio.gather(*(stack.fleet.create(build, vcpus=1, memory_mb=512)
                                     for _ in range(10)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    allocated = [r for r in replies if r.status == EnvStatus.ALLOCATED]
    queued = [r for r in replies if r.status == EnvStatus.QUEUED]
    assert len(allocated) == 4 and len(queued) == 6
    assert sorted(r.position for r in queued) == [1, 2, 3, 4, 5, 6]
    # the first one waiting gets a vCPU when the first lease (1 h) ends
    first = next(r for r in queued if r.position == 1)
    assert first.estimated_wait_s is not None and 3500 < first.estimated_wait_s <= 3600
    row = await stack.sdb.fetchrow(
        "SELECT sum(vcpus) AS v, sum(memory_mb) AS m FROM env_requests "
        "WHERE host_id = $1 AND status = 'allocated'", host.resource_id)
    assert (row["v"], row["m"]) == (4, 2048)
    for r in allocated:
        got = await stack.fleet.wait_event(r.env_id, "env.allocated")
        assert got[0]["host_name"] == host.name
    # releasing one places the oldest waiting request at once
    await stack.fleet.nc.jetstream().publish(EnvReleased.subject, EnvReleased(
        env_id=allocated[0].env_id, host_id=host.resource_id).model_dump_json().encode())
    placed = await stack.fleet.wait_event(first.env_id, "env.allocated")
    assert placed[0]["host_id"] == str(host.resource_id)


async def test_host_over_the_limit_gets_no_vm_and_choices_name_alternatives(
        stack: Stack, unique: str) -> None:
    busy = await stack.fleet.register(qemu_view(f"busy-{unique}", vcpus=2), stack.sdb)
    calm = await stack.fleet.register(qemu_view(f"calm-{unique}", vcpus=2), stack.sdb)
    build = stack.fleet.add_build(Arch.ARM64)
    await stack.fleet.sample(busy.resource_id, 93.0, stack.sdb)
    reply = await stack.fleet.create(build)
    assert reply.ok and reply.host_name == calm.name
    decided = await stack.fleet.wait_event(reply.env_id, "policy.decided")
    busy_report = next(c for c in decided[0]["candidates"] if c["name"] == busy.name)
    assert not busy_report["available"] and "CPU at 93 % (over 85 %)" in busy_report["reasons"]

    # the form's list shows each host's free capacity and why one is unavailable
    hosts = await stack.fleet.request(ListEnvHosts(), EnvHostsReply)
    mine = {h.name: h for h in hosts.hosts if h.name in (busy.name, calm.name)}
    assert mine[calm.name].free_vcpus == 1 and mine[calm.name].available
    assert not mine[busy.name].available

    # asking for the busy host by name: refused with the host that would fit
    reply = await stack.fleet.create(build, host=busy.name)
    assert not reply.ok and reply.error.code == "host_lacks_capacity"
    assert reply.alternatives == [calm.name] and reply.error.field == "host"
    assert "CPU at 93 %" in reply.error.message
    # an architecture no host emulates, and an unknown host: clear refusals
    reply = await stack.fleet.create(build, host=busy.name, vcpus=8)
    assert not reply.ok and reply.error.code == "host_not_capable"
    assert "8 vCPUs requested, at most 2 allocatable" in reply.error.message
    reply = await stack.fleet.create(build, host="no-such-host")
    assert not reply.ok and reply.error.code == "unknown_host"

    # calm full, busy over the limit: queued; busy calming down places it there
    reply2 = await stack.fleet.create(build, vcpus=2)
    assert reply2.ok and reply2.status == EnvStatus.QUEUED and reply2.position == 1
    await stack.fleet.sample(busy.resource_id, 20.0, stack.sdb)
    placed = await stack.fleet.wait_event(reply2.env_id, "env.allocated")
    assert placed[0]["host_name"] == busy.name


async def test_bad_artifacts_are_refused_before_anything_is_reserved(stack: Stack,
                                                                     unique: str) -> None:
    await stack.fleet.register(qemu_view(f"q-{unique}"), stack.sdb)
    no_kernel = stack.fleet.add_build(Arch.X86_64, names=("hello",))
    reply = await stack.fleet.create(no_kernel)
    assert not reply.ok and reply.error.code == "no_boot_artifacts"
    assert "no kernel image" in reply.error.message and "hello" in reply.error.message
    spec = EnvSpec(arch=Arch.X86_64, artifacts=ArtifactSelector(build_id=uuid.uuid4()))
    reply = await stack.fleet.request(CreateEnv(spec=spec), CreateEnvReply)
    assert not reply.ok and reply.error.code == "not_found"
    assert reply.error.field == "artifacts.build_id"
    assert not await stack.sdb.fetchval("SELECT count(*) FROM env_requests WHERE "
                                        "status = 'allocated'")
