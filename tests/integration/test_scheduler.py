"""The scheduler against real NATS and PostgreSQL.

The test plays the other services: it publishes the pool (``resource.registered``,
``health.changed``, samples) and, where a build must end, the builder's events.  No
builder runs here, so allocations stay allocated until the test says otherwise.
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

from labfleet.scheduler.config import SchedulerConfig
from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.build import (
    BuildFailed,
    BuildFinished,
    BuildRequested,
    BuildSpec,
    BuildStarted,
    BuildStatus,
    BuildSucceeded,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.envelope import ErrorInfo, Event
from labfleet.shared.events.health import HealthChanged, HealthStatus, HostSample, HostSampled
from labfleet.shared.events.resource import (
    TOOLCHAIN_PREFIX,
    Arch,
    BuildServerCapabilities,
    Lifecycle,
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceUpdated,
    ResourceView,
    SshTarget,
    Toolchain,
)
from labfleet.shared.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Pool:
    nc: Any
    label: str
    schedulers: list[Service]
    servers: dict[str, ResourceView] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def db(self) -> Any:
        return self.schedulers[0].db

    async def publish(self, event: Event, subject: str | None = None) -> None:
        await self.nc.jetstream().publish(subject or event.subject,
                                          event.model_dump_json().encode(),
                                          headers={"Nats-Msg-Id": str(event.event_id)})

    async def add(self, name: str, arches: tuple[Arch, ...] = (Arch.X86_64,), *,
                  online: bool = True) -> ResourceView:
        view = ResourceView(
            resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=f"{name}-{self.label}",
            ssh=SshTarget(address="127.0.0.1", port=22, username="build"),
            architectures=list(arches), labels={"pool": self.label},
            capabilities=BuildServerCapabilities(
                cpu_cores=8, memory_mb=16000, disk_total_gb=500, disk_free_gb=300,
                toolchains=[Toolchain(arch=a, prefix=TOOLCHAIN_PREFIX[a],
                                      compiler=f"{TOOLCHAIN_PREFIX[a]}gcc", version="13")
                            for a in arches]))
        self.servers[name] = view
        await self.publish(ResourceRegistered(resource=view))
        if online:
            await self.health(name, HealthStatus.ONLINE)
        await self.until("SELECT true FROM build_servers WHERE server_id = $1", view.resource_id)
        return view

    async def health(self, name: str, status: HealthStatus) -> None:
        view = self.servers[name]
        await self.publish(HealthChanged(resource_id=view.resource_id,
                                         kind=ResourceKind.BUILD_SERVER, status=status,
                                         previous=HealthStatus.UNKNOWN))
        await self.until("SELECT true FROM server_health WHERE server_id = $1 AND status = $2",
                         view.resource_id, status.value)

    async def sample(self, name: str, cpu_pct: float, disk_free_gb: float = 300.0) -> None:
        view = self.servers[name]
        at = datetime.now(UTC)
        await self.publish(HostSampled(sample=HostSample(
            resource_id=view.resource_id, kind=ResourceKind.BUILD_SERVER, at=at,
            cpu_pct=cpu_pct, load1=cpu_pct / 100 * 8, cpu_cores=8, mem_total_mb=16000,
            mem_used_mb=1000, disk_total_gb=500, disk_free_gb=disk_free_gb)),
            subject=f"sample.build_server.{view.resource_id}")
        await self.until("SELECT true FROM server_samples WHERE server_id = $1 AND at >= $2",
                         view.resource_id, at.replace(microsecond=0))

    async def until(self, query: str, *args: Any, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = await self.db.fetchval(query, *args)
                if value:
                    return value
                await asyncio.sleep(0.05)

    async def submit(self, arch: Arch = Arch.X86_64, **spec: Any) -> SubmitBuildReply:
        spec.setdefault("labels", {"pool": self.label})
        command = SubmitBuild(spec=BuildSpec(repo_url="https://git.example.org/bsp.git",
                                             arch=arch, **spec))
        msg = await self.nc.request(command.subject, reveal_secrets_json(command).encode(),
                                    timeout=15)
        return SubmitBuildReply.model_validate_json(msg.data)

    def of(self, build_id: uuid.UUID, subject: str) -> list[dict[str, Any]]:
        key = str(build_id)
        return [d for s, d in self.events if s == subject
                and key in (str(d.get("build_id")), str(d.get("request_id")))]

    async def seen(self, build_id: uuid.UUID, subject: str, n: int = 1,
                   timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.of(build_id, subject)) < n:
                await asyncio.sleep(0.05)
        return self.of(build_id, subject)


async def start_pool(settings_factory: Any, nats_url: str, unique: str, replicas: int = 1,
                     config: SchedulerConfig | None = None) -> Pool:
    schedulers = []
    for _ in range(replicas):
        svc = create_scheduler(settings_factory(), config or SchedulerConfig())
        await svc.start()
        schedulers.append(svc)
    pool = Pool(nc=await nats.connect(nats_url), label=unique, schedulers=schedulers)

    async def observe(msg: Any) -> None:
        pool.events.append((msg.subject, json.loads(msg.data)))

    for subject in ("build.*", "request.*", "policy.*"):
        await pool.nc.jetstream().subscribe(subject, cb=observe, ordered_consumer=True,
                                            deliver_policy=nats.js.api.DeliverPolicy.NEW)
    return pool


@pytest.fixture
async def pool(settings_factory, nats_url, unique) -> AsyncIterator[Pool]:  # type: ignore[no-untyped-def]
    p = await start_pool(settings_factory, nats_url, unique)
    try:
        yield p
    finally:
        await stop_pool(p)


async def stop_pool(p: Pool) -> None:
    for view in p.servers.values():
        await p.publish(ResourceRemoved(resource_id=view.resource_id,
                                        kind=ResourceKind.BUILD_SERVER))
    await asyncio.sleep(0.3)
    for svc in p.schedulers:
        await svc.stop()
    await p.nc.close()


# ---- tests ----------------------------------------------------------------------------


async def test_explicit_server_errors_name_why_and_offer_alternatives(pool: Pool) -> None:
    x86 = await pool.add("x86-only")
    arm = await pool.add("arm-builder", (Arch.X86_64, Arch.ARM64))
    await pool.add("arm-offline", (Arch.ARM64,), online=False)

    lacking = await pool.submit(Arch.ARM64, server=x86.name)
    assert not lacking.ok and lacking.error.code == "toolchain_missing"
    assert x86.name in lacking.error.message and "aarch64-linux-gnu-gcc" in lacking.error.message
    assert lacking.alternatives == [arm.name] and lacking.error.field == "server"

    offline = await pool.submit(Arch.ARM64, server=f"arm-offline-{pool.label}")
    assert not offline.ok and offline.error.code == "server_not_ready"
    await pool.health("arm-offline", HealthStatus.OFFLINE)
    offline = await pool.submit(Arch.ARM64, server=f"arm-offline-{pool.label}")
    assert not offline.ok and offline.error.code == "server_offline"
    assert offline.alternatives == [arm.name]

    unknown = await pool.submit(Arch.ARM64, server="no-such-server")
    assert not unknown.ok and unknown.error.code == "unknown_server"
    nobody = await pool.submit(Arch.RISCV64)
    assert not nobody.ok and nobody.error.code == "no_capable_server"
    assert "riscv64" in nobody.error.message

    by_id = await pool.submit(Arch.ARM64, server=str(arm.resource_id))
    assert by_id.ok and by_id.position == 0
    allocated = await pool.seen(by_id.build_id, "build.allocated")
    assert allocated[0]["server_name"] == arm.name


async def test_auto_prefers_the_less_loaded_server_and_logs_the_decision(pool: Pool) -> None:
    await pool.add("busy")
    calm = await pool.add("calm")
    await pool.sample("busy", cpu_pct=95)
    await pool.sample("calm", cpu_pct=5)
    reply = await pool.submit()
    assert reply.ok and reply.position == 0 and reply.estimated_start_s == 0.0
    allocated = (await pool.seen(reply.build_id, "build.allocated"))[0]
    assert allocated["server_id"] == str(calm.resource_id) and allocated["attempt"] == 1
    assert (await pool.seen(reply.build_id, "build.requested"))[0]["spec"]["arch"] == "x86_64"
    decided = (await pool.seen(reply.build_id, "policy.decided"))[0]
    assert decided["chosen"] == calm.name
    assert [c["name"] for c in decided["candidates"][:2]] == [calm.name, f"busy-{pool.label}"]
    assert await pool.db.fetchval("SELECT count(*) FROM decisions WHERE request_id = $1",
                                  reply.build_id) == 1


async def test_queue_waits_for_a_slot_with_an_estimate_from_history(pool: Pool) -> None:
    server = await pool.add("only")
    first = await pool.submit()
    assert first.ok and first.position == 0
    # the builder's part: it ran 120 s and finished, which teaches the scheduler
    await pool.publish(BuildStarted(build_id=first.build_id, server_id=server.resource_id))
    await pool.publish(BuildSucceeded(build_id=first.build_id, server_id=server.resource_id,
                                      commit="c0ffee", duration_s=120.0, artifacts=[]))
    await pool.publish(BuildFinished(build_id=first.build_id, server_id=server.resource_id,
                                     status=BuildStatus.SUCCEEDED))
    await pool.until("SELECT true FROM build_history WHERE build_id = $1", first.build_id)
    await pool.until("SELECT status = 'finished' FROM build_queue WHERE build_id = $1",
                     first.build_id)

    second = await pool.submit()
    assert second.ok and second.position == 0  # the slot is free again
    third = await pool.submit()
    fourth = await pool.submit()
    assert third.ok and third.position == 1 and fourth.position == 2
    assert third.estimated_start_s is not None and 110 <= third.estimated_start_s <= 120
    assert fourth.estimated_start_s is not None and 230 <= fourth.estimated_start_s <= 240
    queued = (await pool.seen(third.build_id, "request.queued"))[0]
    assert queued["position"] == 1 and "busy" in queued["reason"]

    # a finished build frees the slot: the next in line is placed, the one after moves up
    await pool.publish(BuildFinished(build_id=second.build_id, server_id=server.resource_id,
                                     status=BuildStatus.FAILED))
    allocated = (await pool.seen(third.build_id, "build.allocated"))[0]
    assert allocated["server_id"] == str(server.resource_id)
    moved = await pool.seen(fourth.build_id, "request.queued", n=2)
    assert moved[-1]["position"] == 1


async def test_offline_or_maintenance_sends_unstarted_builds_elsewhere(pool: Pool) -> None:
    a = await pool.add("a")
    b = await pool.add("b")
    reply = await pool.submit()
    first = (await pool.seen(reply.build_id, "build.allocated"))[0]
    assert first["server_id"] == str(a.resource_id)  # equal load: the name breaks the tie
    await pool.health("a", HealthStatus.OFFLINE)
    second = (await pool.seen(reply.build_id, "build.allocated", n=2))[-1]
    assert second["server_id"] == str(b.resource_id) and second["attempt"] == 2

    # b goes into maintenance before the builder started there: back to a (online again)
    await pool.health("a", HealthStatus.ONLINE)
    await pool.publish(ResourceUpdated(resource=b.model_copy(
        update={"lifecycle": Lifecycle.MAINTENANCE})))
    third = (await pool.seen(reply.build_id, "build.allocated", n=3))[-1]
    assert third["server_id"] == str(a.resource_id)

    # once started, going offline does not move it (the builder reports the loss)
    await pool.publish(BuildStarted(build_id=reply.build_id, server_id=a.resource_id))
    await pool.until("SELECT status = 'running' FROM build_queue WHERE build_id = $1",
                     reply.build_id)
    await pool.health("a", HealthStatus.OFFLINE)
    await asyncio.sleep(0.5)
    assert len(pool.of(reply.build_id, "build.allocated")) == 3


async def test_lost_server_means_another_attempt_elsewhere_up_to_a_bound(settings_factory, nats_url, unique) -> None:  # type: ignore[no-untyped-def]
    pool = await start_pool(settings_factory, nats_url, unique,
                            config=SchedulerConfig(max_build_attempts=2))
    try:
        a = await pool.add("a")
        b = await pool.add("b")
        reply = await pool.submit()
        assert reply.ok
        lost = ErrorInfo(code="server_lost", message="connection reset")
        await pool.publish(BuildFailed(build_id=reply.build_id, server_id=a.resource_id,
                                       error=lost, retryable=True))
        second = (await pool.seen(reply.build_id, "build.allocated", n=2))[-1]
        assert second["server_id"] == str(b.resource_id) and second["attempt"] == 2
        # a stale report about the first allocation changes nothing
        await pool.publish(BuildFailed(build_id=reply.build_id, server_id=a.resource_id,
                                       error=lost, retryable=True))
        await pool.publish(BuildFailed(build_id=reply.build_id, server_id=b.resource_id,
                                       error=lost, retryable=True))
        rejected = (await pool.seen(reply.build_id, "build.rejected"))[0]
        assert rejected["error"]["code"] == "retries_exhausted"
        assert "connection reset" in rejected["error"]["message"]
        assert len(pool.of(reply.build_id, "build.allocated")) == 2
    finally:
        await stop_pool(pool)


async def test_build_requested_on_the_bus_is_queued_or_rejected(pool: Pool) -> None:
    server = await pool.add("x")
    ok = BuildRequested(build_id=uuid.uuid4(), spec=BuildSpec(
        repo_url="r", arch=Arch.X86_64, labels={"pool": pool.label}), requested_by="pipeline")
    bad = BuildRequested(build_id=uuid.uuid4(), spec=BuildSpec(
        repo_url="r", arch=Arch.ARM, labels={"pool": pool.label}), requested_by="pipeline")
    await pool.publish(ok)
    await pool.publish(bad)
    allocated = (await pool.seen(ok.build_id, "build.allocated"))[0]
    assert allocated["server_id"] == str(server.resource_id)
    rejected = (await pool.seen(bad.build_id, "build.rejected"))[0]
    assert rejected["error"]["code"] == "no_capable_server"
    await pool.publish(ok)  # redelivered: no second allocation
    await asyncio.sleep(0.5)
    assert len(pool.of(ok.build_id, "build.allocated")) == 1


async def test_two_replicas_never_give_one_slot_twice(settings_factory, nats_url, unique) -> None:  # type: ignore[no-untyped-def]
    pool = await start_pool(settings_factory, nats_url, unique, replicas=2)
    try:
        server = await pool.add("one-slot")
        started = time.monotonic()
        replies = await asyncio.gather(*(pool.submit() for _ in range(8)))
        print(f"\n[scheduler] 8 concurrent submits over 2 replicas: "
              f"{(time.monotonic() - started) * 1000:.0f} ms")
        assert all(r.ok for r in replies)
        assert sorted(r.position for r in replies) == list(range(8))
        await asyncio.sleep(0.5)
        allocations = [d for s, d in pool.events if s == "build.allocated"
                       and d["server_id"] == str(server.resource_id)]
        assert len(allocations) == 1
        assert await pool.db.fetchval(
            "SELECT count(*) FROM build_queue WHERE server_id = $1 AND status = 'allocated'",
            server.resource_id) == 1
    finally:
        await stop_pool(pool)
