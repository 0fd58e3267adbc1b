"""Maintenance, decommissioning and artifact retention with every service involved.

Inventory, monitor, scheduler and builder run against real NATS and PostgreSQL; the two
build servers are real OpenSSH servers on loopback (the shared fixture and one of this
test's own), registered through the inventory like an admin would.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from labfleet.builder.config import BuilderConfig
from labfleet.builder.main import create as create_builder
from labfleet.inventory.main import create as create_inventory
from labfleet.monitor.main import create as create_monitor
from labfleet.scheduler.main import create as create_scheduler
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.build import (
    BuildReply,
    BuildSpec,
    BuildStatus,
    GetBuild,
    PinBuild,
    SubmitBuild,
    SubmitBuildReply,
    TagBuild,
)
from labfleet.shared.events.resource import (
    Arch,
    Decommission,
    Lifecycle,
    RegistrationReply,
    ResourceReply,
    ResourceView,
    SetMaintenance,
)
from labfleet.shared.service import Service
from nats.js.errors import ObjectDeletedError, ObjectNotFoundError

from tests.sshd import start_sshd

from .test_builder import NAP_MAKEFILE, QUICK_MAKEFILE, TERMINAL, make_repo
from .test_inventory import CREDENTIAL_KEY, registration

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class Stack:
    def __init__(self, nc: Any, label: str) -> None:
        self.nc = nc
        self.label = label
        self.services: list[Service] = []

    async def ask(self, command: Any, reply_type: Any, timeout: float = 30.0) -> Any:
        msg = await self.nc.request(command.subject, reveal_secrets_json(command).encode(),
                                    timeout=timeout)
        return reply_type.model_validate_json(msg.data)

    async def register(self, sshd: Any, name: str) -> ResourceView:
        reply = await self.ask(registration(sshd, name, architectures=[Arch.X86_64],
                                            labels={"suite": self.label}), RegistrationReply)
        assert reply.ok, reply.error
        return reply.resource

    async def submit(self, repo: Path) -> uuid.UUID:
        spec = BuildSpec(repo_url=f"file://{repo}", ref="main", arch=Arch.X86_64,
                         artifacts=["hello"], labels={"suite": self.label})
        reply = await self.ask(SubmitBuild(spec=spec, requested_by="test"), SubmitBuildReply)
        assert reply.ok, reply.error
        return reply.build_id

    async def build(self, build_id: uuid.UUID) -> Any:
        async with asyncio.timeout(30):
            while True:
                reply = await self.ask(GetBuild(build_id=build_id), BuildReply)
                if reply.ok or reply.error.code != "not_found":
                    assert reply.ok, reply.error
                    return reply.build
                await asyncio.sleep(0.1)

    async def wait_for(self, build_id: uuid.UUID, statuses: set[BuildStatus],
                       timeout: float = 90.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                view = await self.build(build_id)
                if view.status in statuses:
                    return view
                await asyncio.sleep(0.2)


@pytest.fixture
async def stack(settings_factory, nats_url, unique) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    # retention: artifacts older than ~1 s go, looked for every second
    settings = settings_factory(credential_key=CREDENTIAL_KEY, monitor_interval_s=1.0,
                                artifact_retention_days=1.5 / 86400,
                                # the test repository is a local one: file:// allowed
                                build_allowed_url_schemes="https,http,git,ssh,file")
    nc = await nats.connect(nats_url)
    s = Stack(nc, unique)
    for factory in (create_inventory, create_monitor, create_scheduler):
        svc = factory(settings)
        await svc.start()
        s.services.append(svc)
    builder = create_builder(settings, BuilderConfig(heartbeat_s=1.0, retention_interval_s=1.0))
    await builder.start()
    s.services.append(builder)
    try:
        yield s
    finally:
        for svc in reversed(s.services):
            await svc.stop()
        await nc.close()


async def test_maintenance_lets_the_running_build_finish_and_sends_queued_ones_elsewhere(  # type: ignore[no-untyped-def]
        stack: Stack, sshd, tmp_path: Path, unique: str) -> None:
    other_sshd = start_sshd(tmp_path / "sshd-b")
    try:
        a = await stack.register(sshd, f"a-{unique}")
        b = await stack.register(other_sshd, f"b-{unique}")
        put_b = await stack.ask(SetMaintenance(resource_id=b.resource_id, on=True,
                                               reason="new disk", requested_by="test"),
                                ResourceReply)
        assert put_b.ok and put_b.resource.lifecycle == Lifecycle.MAINTENANCE
        assert put_b.resource.maintenance.reason == "new disk"

        slow = make_repo(tmp_path / "slow", NAP_MAKEFILE.format(seconds=5))
        quick = make_repo(tmp_path / "quick", QUICK_MAKEFILE)
        first = await stack.submit(slow)
        running = await stack.wait_for(first, {BuildStatus.RUNNING} | TERMINAL, timeout=60)
        assert running.status == BuildStatus.RUNNING and running.server_id == a.resource_id
        pinned = await stack.ask(PinBuild(build_id=first), BuildReply)
        assert pinned.ok and pinned.build.pinned
        second = await stack.submit(quick)
        tagged = await stack.ask(TagBuild(build_id=(await stack.build(second)).build_id,
                                          tags=["release-1"]), BuildReply)
        assert tagged.ok and tagged.build.tags == ["release-1"]

        # a server with a running build is not decommissioned without force
        refused = await stack.ask(Decommission(resource_id=a.resource_id), ResourceReply)
        assert not refused.ok and refused.error.code == "active_builds"
        assert str(first) in refused.error.details["builds"]
        assert "force" in refused.error.hint

        put_a = await stack.ask(SetMaintenance(resource_id=a.resource_id, on=True,
                                               reason="kernel update"), ResourceReply)
        assert put_a.ok and put_a.resource.lifecycle == Lifecycle.MAINTENANCE
        done = await stack.wait_for(first, TERMINAL)
        assert done.status == BuildStatus.SUCCEEDED and done.server_id == a.resource_id, done
        await asyncio.sleep(2.0)  # a's slot is free now, but a is in maintenance
        assert (await stack.build(second)).status == BuildStatus.QUEUED

        lifted = await stack.ask(SetMaintenance(resource_id=b.resource_id, on=False),
                                 ResourceReply)
        assert lifted.ok and lifted.resource.lifecycle == Lifecycle.ACTIVE
        assert lifted.resource.maintenance is None
        elsewhere = await stack.wait_for(second, TERMINAL)
        assert elsewhere.status == BuildStatus.SUCCEEDED, elsewhere.error
        assert elsewhere.server_id == b.resource_id

        # retention: a third build, neither pinned nor tagged, loses its artifacts
        third = await stack.submit(quick)
        built = await stack.wait_for(third, TERMINAL)
        assert built.status == BuildStatus.SUCCEEDED and built.artifacts
        store = await stack.nc.jetstream().object_store(built.artifacts[0].bucket)
        async with asyncio.timeout(30):
            while (await stack.build(third)).artifacts_expired_at is None:
                await asyncio.sleep(0.3)
        expired = await stack.build(third)
        assert expired.artifacts == []
        with pytest.raises((ObjectNotFoundError, ObjectDeletedError)):
            await store.get_info(built.artifacts[0].object_name)
        for kept in (first, second):
            view = await stack.build(kept)
            assert view.artifacts and view.artifacts_expired_at is None
            info = await store.get_info(view.artifacts[0].object_name)
            assert info.size == view.artifacts[0].size

        # no active builds left: decommissioning goes through and removes the server
        gone = await stack.ask(Decommission(resource_id=a.resource_id, requested_by="test"),
                               ResourceReply)
        assert gone.ok, gone.error
        assert gone.resource.lifecycle == Lifecycle.RETIRED
        forced = await stack.ask(Decommission(resource_id=b.resource_id, force=True),
                                 ResourceReply)
        assert forced.ok, forced.error
    finally:
        other_sshd.stop()


async def test_a_future_window_leaves_the_server_active_until_it_starts(  # type: ignore[no-untyped-def]
        stack: Stack, sshd, unique: str) -> None:
    server = await stack.register(sshd, f"w-{unique}")
    start = datetime.now(UTC) + timedelta(hours=1)
    reply = await stack.ask(SetMaintenance(resource_id=server.resource_id, on=True,
                                           reason="rack move", start=start,
                                           end=start + timedelta(hours=2)), ResourceReply)
    assert reply.ok and reply.resource.lifecycle == Lifecycle.ACTIVE
    assert reply.resource.maintenance.start == start
    bad = await stack.ask(SetMaintenance(resource_id=server.resource_id, on=True,
                                         start=start, end=start - timedelta(minutes=1)),
                          ResourceReply)
    assert not bad.ok and bad.error.code == "invalid_window" and bad.error.field == "end"
    removed = await stack.ask(Decommission(resource_id=server.resource_id), ResourceReply)
    assert removed.ok, removed.error
