"""One subscription per gateway process, fanned out to every browser watching.

The hub listens (core NATS, no consumer state) to samples, health changes, resource and
build events; keeps the latest of each in memory; and tells each connected page which of
*its* rows changed — a page watching 50 of 2,000 servers hears about those 50 only.
Changes are coalesced per ``flush_interval_s`` so a burst of samples costs one update
per row.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from labfleet.shared.events.build import BuildStatus
from labfleet.shared.events.health import HEALTH_BUCKET, SAMPLES_BUCKET, HealthChanged, HostSample
from labfleet.shared.events.resource import ResourceRegistered, ResourceRemoved, ResourceView
from pydantic import BaseModel, ConfigDict, ValidationError

from .state import HealthState, SharedState, parse_health, parse_sample

log = logging.getLogger(__name__)

ACTIVE = {BuildStatus.ALLOCATED, BuildStatus.RUNNING}
TERMINAL = {BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED}


def server_key(resource_id: uuid.UUID | str) -> str:
    return f"server:{resource_id}"


def build_key(build_id: uuid.UUID | str) -> str:
    return f"build:{build_id}"


@dataclass(eq=False)
class LiveClient:
    keys: frozenset[str]
    queue: asyncio.Queue[set[str]] = field(default_factory=lambda: asyncio.Queue(maxsize=64))

    def offer(self, changed: set[str]) -> None:
        mine = changed & self.keys
        if not mine:
            return
        try:
            self.queue.put_nowait(mine)
        except asyncio.QueueFull:
            # a slow browser: drop the oldest batch; the next one still names its rows
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(mine)


class _BuildFact(BaseModel):
    """The part every ``build.*`` event shares that the hub needs."""

    model_config = ConfigDict(extra="ignore")
    build_id: uuid.UUID
    server_id: uuid.UUID | None = None


ResourceLoader = Callable[[], Awaitable[list[ResourceView]]]


class LiveHub:
    def __init__(self, bus: Any, state: SharedState, *, flush_interval_s: float = 0.25,
                 resources_ttl_s: float = 60.0) -> None:
        self.bus = bus
        self.state = state
        self.flush_interval_s = flush_interval_s
        self.resources_ttl_s = resources_ttl_s
        self.samples: dict[uuid.UUID, HostSample] = {}
        self.health: dict[uuid.UUID, HealthState] = {}
        self.active_builds: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._resources: dict[uuid.UUID, ResourceView] = {}
        self._resources_at = 0.0
        self._resources_lock = asyncio.Lock()
        self.clients: set[LiveClient] = set()
        self._dirty: set[str] = set()
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._seeded = False
        self.builds_seeded = False
        self.on_clients_changed: Callable[[int], None] = lambda n: None
        #: set when the gateway stops, so open streams end instead of holding shutdown
        self.closing = asyncio.Event()

    # ---- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        for subject, cb in (("sample.>", self._on_sample), ("health.changed", self._on_health),
                            ("resource.*", self._on_resource), ("build.*", self._on_build)):
            self._subs.append(await self.bus.nc.subscribe(subject, cb=cb))
        self._task = asyncio.create_task(self._flush_loop(), name="gateway-live-flush")

    async def stop(self) -> None:
        self.closing.set()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def seed(self) -> None:
        """Fill the caches from the KV buckets once (later changes arrive as messages)."""
        if self._seeded:
            return
        samples = await self.state.all_entries(SAMPLES_BUCKET)
        health = await self.state.all_entries(HEALTH_BUCKET)
        for data in samples.values():
            sample = parse_sample(data)
            if sample is not None:
                self.samples.setdefault(sample.resource_id, sample)
        for key, data in health.items():
            state = parse_health(data)
            with contextlib.suppress(ValueError):
                if state is not None:
                    self.health.setdefault(uuid.UUID(key), state)
        # both buckets exist once the monitor has run; until then try again next time
        self._seeded = bool(samples or health)

    # ---- resources (loaded on demand, kept current by events) -------------------

    async def resources(self, load: ResourceLoader) -> dict[uuid.UUID, ResourceView]:
        async with self._resources_lock:
            if time.monotonic() - self._resources_at > self.resources_ttl_s:
                views = await load()
                self._resources = {v.resource_id: v for v in views}
                self._resources_at = time.monotonic()
        return self._resources

    def remember(self, view: ResourceView) -> None:
        self._resources[view.resource_id] = view

    def forget_resources(self) -> None:
        self._resources_at = 0.0

    # ---- clients ----------------------------------------------------------------

    def connect(self, keys: Iterable[str]) -> LiveClient:
        client = LiveClient(keys=frozenset(keys))
        self.clients.add(client)
        self.on_clients_changed(len(self.clients))
        return client

    def disconnect(self, client: LiveClient) -> None:
        self.clients.discard(client)
        self.on_clients_changed(len(self.clients))

    def mark(self, key: str) -> None:
        if self.clients:
            self._dirty.add(key)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            if not self._dirty:
                continue
            changed, self._dirty = self._dirty, set()
            for client in list(self.clients):
                client.offer(changed)

    # ---- message callbacks (core NATS) -------------------------------------------

    async def _on_sample(self, msg: Any) -> None:
        sample = parse_sample(msg.data)
        if sample is None:
            return
        self.samples[sample.resource_id] = sample
        self.mark(server_key(sample.resource_id))

    async def _on_health(self, msg: Any) -> None:
        try:
            event = HealthChanged.model_validate_json(msg.data)
        except ValidationError:
            return
        self.health[event.resource_id] = HealthState(
            status=event.status, reason=event.reason, last_seen=event.last_seen,
            warnings=event.warnings)
        self.mark(server_key(event.resource_id))

    async def _on_resource(self, msg: Any) -> None:
        try:
            if msg.subject.endswith(".removed"):
                removed = ResourceRemoved.model_validate_json(msg.data)
                self._resources.pop(removed.resource_id, None)
                self.mark(server_key(removed.resource_id))
                return
            view = ResourceRegistered.model_validate_json(msg.data).resource
        except ValidationError:
            return
        self._resources[view.resource_id] = view
        self.mark(server_key(view.resource_id))

    async def _on_build(self, msg: Any) -> None:
        try:
            fact = _BuildFact.model_validate_json(msg.data)
        except ValidationError:
            return
        build_id, server_id = fact.build_id, fact.server_id
        kind = msg.subject.rsplit(".", 1)[-1]
        if server_id is not None:
            running = self.active_builds.setdefault(server_id, set())
            if kind in ("allocated", "started"):
                running.add(build_id)
            elif kind in ("finished", "succeeded", "failed", "cancelled"):
                running.discard(build_id)
            self.mark(server_key(server_id))
        if kind in ("cancelled", "rejected"):
            for running in self.active_builds.values():
                running.discard(build_id)
        self.mark(build_key(build_id))
        self.mark("builds")

    def seed_active_builds(self, builds: Iterable[tuple[uuid.UUID, uuid.UUID | None, str]]
                           ) -> None:
        for build_id, server_id, status in builds:
            if server_id is not None and status in ACTIVE:
                self.active_builds.setdefault(server_id, set()).add(build_id)
        self.builds_seeded = True
