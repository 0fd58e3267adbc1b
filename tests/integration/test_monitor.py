"""The monitor against real NATS, PostgreSQL, the real inventory and dedicated sshd servers.

Each test starts its own sshd (so stopping or freezing it harms nobody else), registers it
through the inventory exactly as an admin would, and watches what the monitor publishes.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from cryptography.fernet import Fernet
from labfleet.embedded.ports import free_port
from labfleet.inventory.main import create as create_inventory
from labfleet.monitor.adapters.history import SampleHistory
from labfleet.monitor.main import create as create_monitor
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.health import (
    HEALTH_BUCKET,
    SAMPLES_BUCKET,
    GetSampleHistory,
    HealthChanged,
    HealthRecord,
    HealthStatus,
    HostSample,
    HostSampled,
    SampleHistoryReply,
)
from labfleet.shared.events.resource import (
    RegisterBuildServer,
    RegistrationReply,
    RemoveResource,
    ResourceKind,
    ResourceRegistered,
    ResourceRemoved,
    ResourceReply,
    ResourceView,
    SshTarget,
)
from labfleet.shared.service import Service
from pydantic import SecretStr

from tests.sshd import Sshd, start_sshd

pytestmark = pytest.mark.integration

CREDENTIAL_KEY = Fernet.generate_key().decode()
INTERVAL = 0.5
OFFLINE_AFTER = 2


class Collector:
    """Every message on a core NATS subject, kept for the test to wait on."""

    def __init__(self, parse: Callable[[bytes], Any]) -> None:
        self.parse = parse
        self.items: list[tuple[float, Any]] = []
        self._arrived = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        self.items.append((time.monotonic(), self.parse(msg.data)))
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, item in self.items[seen:]:
                if predicate(item):
                    return item
            seen = len(self.items)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return None


@pytest.fixture
async def stack(settings_factory, request) -> AsyncIterator[tuple[Service, Service]]:  # type: ignore[no-untyped-def]
    overrides = getattr(request, "param", {})
    inventory = create_inventory(settings_factory(credential_key=CREDENTIAL_KEY))
    monitor = create_monitor(settings_factory(
        credential_key=CREDENTIAL_KEY, monitor_interval_s=INTERVAL,
        offline_after_failures=OFFLINE_AFTER, **overrides))
    await inventory.start()
    await monitor.start()
    yield inventory, monitor
    await monitor.stop()
    await inventory.stop()


@pytest.fixture
async def nc(nats_url: str):  # type: ignore[no-untyped-def]
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def register(nc: Any, server: Sshd, name: str) -> ResourceView:
    cmd = RegisterBuildServer(hostname=name, address=server.host, ssh_port=server.port,
                              username=server.username, private_key=SecretStr(server.private_key))
    msg = await nc.request(cmd.subject, reveal_secrets_json(cmd).encode(), timeout=30)
    reply = RegistrationReply.model_validate_json(msg.data)
    assert reply.ok and reply.resource is not None, reply.error
    return reply.resource


async def remove(nc: Any, resource_id: uuid.UUID) -> None:
    cmd = RemoveResource(resource_id=resource_id)
    msg = await nc.request(cmd.subject, cmd.model_dump_json().encode(), timeout=10)
    assert ResourceReply.model_validate_json(msg.data).ok


async def subscribe(nc: Any, subject: str, parse: Callable[[bytes], Any]) -> Collector:
    collector = Collector(parse)
    await nc.subscribe(subject, cb=collector.on_msg)
    return collector


def process_tree() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def children(pid: int) -> list[int]:
    return process_tree().get(pid, [])


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (an sshd we started: its connections and their sessions)."""
    tree = process_tree()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def signal_tree(server: Sshd, sig: int) -> None:
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_with_sessions(server: Sshd) -> None:
    """Stop the sshd *and* its open connections (stopping sshd alone keeps sessions alive)."""
    sessions = descendants(server.process.pid)
    server.stop()
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


async def what_the_monitor_said(nc: Any, resource_id: uuid.UUID, *collectors: Collector) -> str:
    """For a failure message: the KV state and every event seen about the resource."""
    js = nc.jetstream()
    said = []
    for bucket in (SAMPLES_BUCKET, HEALTH_BUCKET):
        try:
            said.append(f"KV {bucket}: {(await (await js.key_value(bucket)).get(str(resource_id))).value!r}")
        except Exception as exc:  # noqa: BLE001 - this is a diagnosis
            said.append(f"KV {bucket}: {type(exc).__name__}")
    for collector in collectors:
        said += [f"{t:.2f} {e!r}" for t, e in collector.items if for_resource(resource_id)(e)]
    return "\n".join(said)


def for_resource(resource_id: uuid.UUID, status: HealthStatus | None = None):  # type: ignore[no-untyped-def]
    def match(event: Any) -> bool:
        if isinstance(event, HostSampled):
            return event.sample.resource_id == resource_id
        return event.resource_id == resource_id and (status is None or event.status is status)
    return match


async def test_samples_then_offline_then_online(stack, nc, tmp_path, unique):  # type: ignore[no-untyped-def]
    server = start_sshd(tmp_path / "sshd")
    samples = await subscribe(nc, "sample.build_server.>", HostSampled.model_validate_json)
    health = await subscribe(nc, HealthChanged.subject, HealthChanged.model_validate_json)
    try:
        view = await register(nc, server, f"mon-{unique}")
        rid = view.resource_id
        assert view.capabilities is not None

        # samples on the stream subject within a few seconds, with plausible values
        first = await samples.wait_for(for_resource(rid), timeout=10)
        assert first is not None, await what_the_monitor_said(nc, rid, health)
        s = first.sample
        assert s.cpu_cores == view.capabilities.cpu_cores
        assert 0.0 <= s.cpu_pct <= 100.0 and s.load1 >= 0
        assert abs(s.mem_total_mb - view.capabilities.memory_mb) <= 64
        assert 0 < s.mem_used_mb < s.mem_total_mb
        assert 0 < s.disk_free_gb <= s.disk_total_gb
        assert abs(s.disk_total_gb - view.capabilities.disk_total_gb) < 1
        assert s.compile_procs >= 0
        online = await health.wait_for(for_resource(rid, HealthStatus.ONLINE), timeout=10)
        assert online is not None and online.previous is HealthStatus.UNKNOWN

        # the latest sample and the status are in KV for dashboards
        js = nc.jetstream()
        latest = HostSampled.model_fields["sample"].annotation.model_validate_json(  # type: ignore[union-attr]
            (await (await js.key_value(SAMPLES_BUCKET)).get(str(rid))).value)
        assert latest.resource_id == rid and latest.at >= s.at
        record = HealthRecord.model_validate_json(
            (await (await js.key_value(HEALTH_BUCKET)).get(str(rid))).value)
        assert record.status is HealthStatus.ONLINE

        # polls keep coming at the interval, over ONE persistent connection
        await samples.wait_for(lambda e: for_resource(rid)(e) and e.sample.at > s.at, timeout=5)
        await asyncio.sleep(4 * INTERVAL)
        mine = [t for t, e in samples.items if for_resource(rid)(e)]
        assert len(mine) >= 4, mine
        connections = children(server.process.pid)  # sshd forks one process per connection
        assert len(connections) == 1, f"expected one pooled connection, sshd has {connections}"

        # history for the detail page
        cmd = GetSampleHistory(resource_id=rid, since=s.at)
        msg = await nc.request(cmd.subject, cmd.model_dump_json().encode(), timeout=10)
        history = SampleHistoryReply.model_validate_json(msg.data)
        assert history.ok and len(history.samples) >= 2
        assert all(h.resource_id == rid and h.at >= s.at for h in history.samples)
        assert [h.at for h in history.samples] == sorted(h.at for h in history.samples)

        # the host goes away: offline within offline_after_failures * interval + slack
        stopped = time.monotonic()
        stop_with_sessions(server)
        offline = await health.wait_for(for_resource(rid, HealthStatus.OFFLINE),
                                        timeout=OFFLINE_AFTER * INTERVAL + 8)
        assert offline is not None, await what_the_monitor_said(nc, rid, health)
        took = next(t for t, e in health.items if e is offline) - stopped
        assert took < OFFLINE_AFTER * INTERVAL + 8
        print(f"\n[monitor] offline {took:.2f}s after the host went away")
        assert offline.previous is HealthStatus.ONLINE
        last_good = max(e.sample.at for _, e in samples.items if for_resource(rid)(e))
        assert offline.last_seen == last_good  # the last known sample's time, kept
        assert "refused" in offline.reason or "failed" in offline.reason
        record = HealthRecord.model_validate_json(
            (await (await js.key_value(HEALTH_BUCKET)).get(str(rid))).value)
        assert record.status is HealthStatus.OFFLINE
        assert record.last_sample is not None and record.last_seen == offline.last_seen
        kv_sample = (await (await js.key_value(SAMPLES_BUCKET)).get(str(rid))).value
        assert kv_sample, "the last known sample must stay in KV while offline"

        # back again: online
        server.restart()
        restarted = time.monotonic()
        back = await health.wait_for(
            lambda e: for_resource(rid, HealthStatus.ONLINE)(e) and e.previous is HealthStatus.OFFLINE,
            timeout=10)
        assert back is not None, await what_the_monitor_said(nc, rid, health)
        print(f"[monitor] online again {next(t for t, e in health.items if e is back) - restarted:.2f}s "
              "after sshd restarted")
        await remove(nc, rid)
    finally:
        server.stop()


async def test_a_frozen_host_delays_nobody_and_goes_offline_alone(stack, nc, tmp_path, unique):  # type: ignore[no-untyped-def]
    healthy, frozen = start_sshd(tmp_path / "a"), start_sshd(tmp_path / "b")
    samples = await subscribe(nc, "sample.build_server.>", HostSampled.model_validate_json)
    health = await subscribe(nc, HealthChanged.subject, HealthChanged.model_validate_json)
    try:
        a = await register(nc, healthy, f"mon-a-{unique}")
        b = await register(nc, frozen, f"mon-b-{unique}")
        assert await samples.wait_for(for_resource(b.resource_id), timeout=10) is not None
        assert await samples.wait_for(for_resource(a.resource_id), timeout=10) is not None

        # b stops answering but keeps its TCP connection open: its polls hang until timeout
        signal_tree(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        offline = await health.wait_for(for_resource(b.resource_id, HealthStatus.OFFLINE),
                                        timeout=20)
        assert offline is not None, await what_the_monitor_said(nc, b.resource_id, health)
        window = [t for t, e in samples.items if for_resource(a.resource_id)(e) and t > frozen_at]
        assert len(window) >= 4, "the healthy host stopped being sampled"
        gaps = [later - earlier for earlier, later in itertools.pairwise(window)]
        assert max(gaps) < 4 * INTERVAL + 1.0, f"the healthy host's samples stalled: {gaps}"
        offline_after = next(t for t, e in health.items if e is offline) - frozen_at
        print(f"\n[monitor] frozen host offline after {offline_after:.2f}s; healthy "
              f"host sampled {len(window)} times meanwhile, largest gap {max(gaps):.2f}s")
        assert not [e for _, e in health.items if for_resource(a.resource_id)(e)
                    and e.status is not HealthStatus.ONLINE]
    finally:
        signal_tree(frozen, signal.SIGCONT)
        healthy.stop()
        frozen.stop()
    await remove(nc, a.resource_id)
    await remove(nc, b.resource_id)


@pytest.mark.parametrize("stack", [{"disk_warning_gb": 1_000_000.0}], indirect=True)
async def test_low_disk_is_degraded_with_a_warning(stack, nc, tmp_path, unique):  # type: ignore[no-untyped-def]
    server = start_sshd(tmp_path / "sshd")
    health = await subscribe(nc, HealthChanged.subject, HealthChanged.model_validate_json)
    try:
        view = await register(nc, server, f"mon-disk-{unique}")
        degraded = await health.wait_for(for_resource(view.resource_id, HealthStatus.DEGRADED),
                                         timeout=15)
        assert degraded is not None, await what_the_monitor_said(nc, view.resource_id, health)
        assert degraded.warnings and degraded.warnings[0].startswith("disk_low")
        assert "1e+06 GB" in degraded.warnings[0] or "1000000 GB" in degraded.warnings[0]
        await remove(nc, view.resource_id)
    finally:
        server.stop()


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    return await check()


async def test_projection_is_idempotent_and_a_removal_is_final(stack, nc, unique):  # type: ignore[no-untyped-def]
    """The inventory's events, published as it publishes them: twice, and out of order."""
    _, monitor = stack
    db = monitor.db
    view = ResourceView(
        resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=f"proj-{unique}",
        ssh=SshTarget(address="127.0.0.1", port=free_port("127.0.0.1"), username="nobody",
                      host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5"
                               "C9okWi0dh2l9GKJl"))
    js = nc.jetstream()
    registered = ResourceRegistered(resource=view)
    payload = registered.model_dump_json().encode()
    await js.publish(registered.subject, payload, headers={"Nats-Msg-Id": str(registered.event_id)})
    # the same event again under another message id: JetStream keeps both, the monitor acts once
    await js.publish(registered.subject, payload, headers={"Nats-Msg-Id": f"again-{unique}"})

    async def handled() -> bool:
        return await db.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1",
                                 registered.event_id) == 1 and \
            await db.fetchval("SELECT count(*) FROM resources WHERE id = $1 AND NOT removed",
                              view.resource_id) == 1
    assert await wait_until(handled), "the registration never reached the projection"

    removed = ResourceRemoved(resource_id=view.resource_id, kind=view.kind)
    await js.publish(removed.subject, removed.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": str(removed.event_id)})
    late = ResourceRegistered(resource=view, occurred_at=registered.occurred_at)
    await js.publish(late.subject, late.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": str(late.event_id)})

    async def late_handled() -> bool:
        return await db.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1",
                                 late.event_id) == 1
    assert await wait_until(late_handled)
    assert await db.fetchval("SELECT removed FROM resources WHERE id = $1", view.resource_id)
    assert await db.fetchval("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)",
                             [registered.event_id, removed.event_id, late.event_id]) == 3


async def test_history_older_than_a_week_is_pruned(stack):  # type: ignore[no-untyped-def]
    _, monitor = stack
    history = SampleHistory(monitor.db)
    rid = uuid.uuid4()
    now = datetime.now(UTC)
    for age in (timedelta(days=8), timedelta(days=6), timedelta(minutes=1)):
        history.add(HostSample(resource_id=rid, kind=ResourceKind.BUILD_SERVER, at=now - age,
                               cpu_pct=1, load1=0.1, cpu_cores=2, mem_total_mb=100,
                               mem_used_mb=10, disk_total_gb=10, disk_free_gb=5))
    await history.flush()
    assert len(await history.between(rid, None, None, 100)) == 3
    assert await history.prune() >= 1
    kept = await history.between(rid, None, None, 100)
    assert [now - s.at > timedelta(days=7) for s in kept] == [False, False]
    assert [s.at for s in await history.between(rid, now - timedelta(days=1), None, 100)] == [
        kept[-1].at]
