"""The poll loop: every watched host on its own timer, a bound on polls in flight.

Each host has its own task, so a slow or unreachable host delays nobody else; its poll
gives up after the poll timeout on its own.  A semaphore caps how many polls run at once
(SSH handshakes and the hosts' answers cost CPU here), and first polls are spread over
the interval so a restart does not hit every host in the same second.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

from labfleet.shared.events.health import HostSample
from labfleet.shared.events.resource import ResourceKind
from labfleet.shared.ssh import Credentials, SshError
from labfleet.shared.ssh.libvirt import LibvirtFailure

from .adapters.credentials import CredentialCache, CredentialsUnavailable
from .adapters.host_poll import HostPoll
from .adapters.libvirt_vms import LibvirtSessions
from .adapters.projection import PollTarget
from .domain.health import PollFailed, PollOutcome, PollSucceeded
from .domain.sampling import CpuTimes, UnreadablePoll, to_sample

log = logging.getLogger(__name__)

OutcomeHandler = Callable[[PollTarget, PollOutcome], Awaitable[None]]

#: polls in flight at once across all hosts
MAX_CONCURRENT_POLLS = 64


class Poller:
    def __init__(self, *, interval: float, host_poll: HostPoll, credentials: CredentialCache,
                 on_outcome: OutcomeHandler, max_concurrent: int = MAX_CONCURRENT_POLLS,
                 vms: LibvirtSessions | None = None) -> None:
        self.interval = interval
        #: running VMs of QEMU hosts (None: VMs are not counted)
        self.vms = vms
        self.host_poll = host_poll
        self.credentials = credentials
        self.on_outcome = on_outcome
        self._limit = asyncio.Semaphore(max_concurrent)
        self._targets: dict[uuid.UUID, PollTarget] = {}
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._cpu: dict[uuid.UUID, CpuTimes] = {}
        self._running = False

    # ---- which hosts --------------------------------------------------------------

    def target(self, resource_id: uuid.UUID) -> PollTarget | None:
        return self._targets.get(resource_id)

    def watch(self, target: PollTarget) -> None:
        old = self._targets.get(target.resource_id)
        self._targets[target.resource_id] = target
        if old is not None and old != target:
            # address, user or pinned key may have changed: log in afresh
            self.host_poll.drop(old)
            self.credentials.forget(target.resource_id)
            if self.vms is not None:
                self.vms.drop(target.resource_id)
        if self._running and target.resource_id not in self._tasks:
            self._spawn(target.resource_id)

    async def unwatch(self, resource_id: uuid.UUID) -> None:
        target = self._targets.pop(resource_id, None)
        task = self._tasks.pop(resource_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if target is not None:
            self.host_poll.drop(target)
        if self.vms is not None:
            self.vms.drop(resource_id)
        self.credentials.forget(resource_id)
        self._cpu.pop(resource_id, None)

    def sync(self, targets: Iterable[PollTarget]) -> None:
        """Watch every one of ``targets`` as it is now (after a restart, or a missed event).

        Hosts are only added or updated here; a host stops being watched on its
        ``resource.removed`` event alone, so a read of the projection that raced with a
        registration never drops the new host.
        """
        for target in targets:
            self.watch(target)

    # ---- running ------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        for resource_id in self._targets:
            if resource_id not in self._tasks:
                self._spawn(resource_id)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, resource_id: uuid.UUID) -> None:
        self._tasks[resource_id] = asyncio.create_task(self._host_loop(resource_id),
                                                       name=f"poll-{resource_id}")

    async def _host_loop(self, resource_id: uuid.UUID) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, min(self.interval, 2.0)))
        next_at = loop.time()
        while (target := self._targets.get(resource_id)) is not None:
            async with self._limit:
                outcome = await self.poll_once(target)
            if outcome is not None:
                try:
                    await self.on_outcome(target, outcome)
                except asyncio.CancelledError:
                    raise
                except Exception:  # publishing failed (NATS/PG away): keep polling
                    log.exception("recording a poll failed", extra={"resource_id": str(resource_id)})
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # the poll overran its slot: skip ahead rather than burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def poll_once(self, target: PollTarget) -> PollOutcome | None:
        """One poll; None when it could not even be tried (no credentials: not the host's fault)."""
        try:
            creds = await self.credentials.get(target.resource_id)
        except CredentialsUnavailable as exc:
            log.warning("cannot poll: no credentials",
                        extra={"resource_id": str(target.resource_id), "reason": str(exc)})
            return None
        try:
            reading = await self.host_poll.read(target, creds)
        except SshError as exc:
            self.host_poll.drop(target)
            if self.vms is not None:
                self.vms.drop(target.resource_id)
            if exc.code == "authentication_failed":
                self.credentials.forget(target.resource_id)
            return PollFailed(at=datetime.now(UTC), code=exc.code, message=exc.message)
        except UnreadablePoll as exc:
            return PollFailed(at=datetime.now(UTC), code="unreadable",
                              message=f"{target.address} answered the poll unreadably: {exc}")
        sample = to_sample(target.resource_id, target.kind, datetime.now(UTC), reading,
                           self._cpu.get(target.resource_id))
        self._cpu[target.resource_id] = reading.cpu
        if target.kind is ResourceKind.QEMU_HOST and self.vms is not None:
            sample = await self._with_vms(target, creds, sample)
        return PollSucceeded(sample)

    async def _with_vms(self, target: PollTarget, creds: Credentials, sample: HostSample
                        ) -> HostSample:
        """The sample with the host's running VMs; their count unknown when libvirt fails."""
        assert self.vms is not None
        try:
            names = await self.vms.running(target, creds)
        except LibvirtFailure as exc:
            log.info("running VMs unknown", extra={"resource_id": str(target.resource_id),
                                                   "code": exc.code, "error": exc.message[:300]})
            return sample
        return sample.model_copy(update={"vm_count": len(names), "vms": names})


async def run_every(interval_s: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Housekeeping: ``job`` every ``interval_s``, a failure logged and tried again next time."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("housekeeping failed", extra={"job": what})
