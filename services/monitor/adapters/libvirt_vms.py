"""Running VMs of QEMU hosts, from libvirt: one persistent connection per host.

libvirt-python blocks, so every call runs on this module's own small thread pool (never
the event loop, and not the default executor other work shares).  A host has at most one
call in flight: when libvirt is slow to answer, the next poll reports the VM count as
unknown instead of stacking threads.  libvirt's default event loop runs in a daemon
thread so that connection keep-alives (5 s, 3 missed) close a connection to a host that
went away, which also ends a call stuck on it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from labfleet.shared.events.health import VmInfo
from labfleet.shared.ssh import Credentials
from labfleet.shared.ssh.libvirt import LibvirtFailure, libvirt, open_remote

from .projection import PollTarget

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

_event_loop_lock = threading.Lock()
_event_loop_started = False

#: libvirt's domain state numbers, as words
STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
          5: "shutoff", 6: "crashed", 7: "pmsuspended"}


def _start_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started or libvirt is None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _vm_info(dom: Any) -> VmInfo:
    state, _max_kb, mem_kb, vcpus, _cpu_time = dom.info()
    title = description = ""
    try:
        root = ET.fromstring(dom.XMLDesc(0))
        title = root.findtext("title") or ""
        description = root.findtext("description") or ""
    except (ET.ParseError, Exception):  # noqa: BLE001 - details are a nicety
        pass
    return VmInfo(name=dom.name(), uuid=dom.UUIDString(), state=STATES.get(state, str(state)),
                  vcpus=vcpus, memory_mb=mem_kb // 1024, title=title, description=description)


class LibvirtSessions:
    def __init__(self, *, timeout: float, max_threads: int = 8) -> None:
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_threads,
                                                           thread_name_prefix="libvirt")
        self._conns: dict[uuid.UUID, Any] = {}
        self._busy: set[uuid.UUID] = set()

    def _connection(self, target: PollTarget, creds: Credentials) -> Any:
        conn = self._conns.get(target.resource_id)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except Exception:  # noqa: BLE001 - a dead handle is replaced
                pass
            self._close(target.resource_id)
        if not target.host_key:
            raise LibvirtFailure("host_key_missing", "no pinned host key for this host")
        _start_event_loop()
        conn = open_remote(target.address, target.port, creds, target.host_key)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except Exception:  # noqa: BLE001 - keep-alives are a safety net, not a requirement
            log.debug("libvirt keep-alive not available", exc_info=True)
        self._conns[target.resource_id] = conn
        return conn

    def _close(self, resource_id: uuid.UUID) -> None:
        conn = self._conns.pop(resource_id, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _domains(self, target: PollTarget, creds: Credentials, detailed: bool) -> list[Any]:
        try:
            conn = self._connection(target, creds)
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            domains = conn.listAllDomains(flags if not detailed else 0)
            return [_vm_info(d) for d in domains] if detailed else sorted(d.name() for d in domains)
        except LibvirtFailure:
            raise
        except Exception as exc:  # a libvirtError: the connection is suspect, reopen next time
            self._close(target.resource_id)
            raise LibvirtFailure("libvirt_error", str(exc)) from None

    async def _call(self, target: PollTarget, creds: Credentials, detailed: bool) -> list[Any]:
        if target.resource_id in self._busy:
            raise LibvirtFailure("busy", "the previous libvirt call to this host has not ended")
        self._busy.add(target.resource_id)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._domains, target, creds, detailed)
        future.add_done_callback(lambda _f: self._busy.discard(target.resource_id))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise LibvirtFailure("timeout", f"libvirt on {target.address} did not answer "
                                            f"within {self.timeout:g} s") from None

    async def running(self, target: PollTarget, creds: Credentials) -> list[str]:
        """Names of the running domains (raises :class:`LibvirtFailure`)."""
        return await self._call(target, creds, detailed=False)

    async def domains(self, target: PollTarget, creds: Credentials) -> list[VmInfo]:
        """Every defined domain with its state, vCPUs, memory, title and description."""
        return await self._call(target, creds, detailed=True)

    def drop(self, resource_id: uuid.UUID) -> None:
        """Forget the host's connection (closed in the pool, so a hung close blocks nobody)."""
        conn = self._conns.pop(resource_id, None)
        if conn is not None:
            self._pool.submit(conn.close)

    async def close(self) -> None:
        for resource_id in list(self._conns):
            self.drop(resource_id)
        self._pool.shutdown(wait=False, cancel_futures=True)
