"""A QEMU host's view and credentials, asked from inventory just before they are needed
(:func:`labfleet.shared.access.ask_access`); in memory only, never logged."""
from __future__ import annotations

import uuid

from labfleet.shared.access import AccessRefused, InventoryDidNotAnswer, ask_access
from labfleet.shared.bus import Bus

from .libvirt_host import HostAccess


class HostUnavailable(Exception):
    def __init__(self, message: str, hint: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.hint = hint
        self.retryable = retryable


async def host_access(bus: Bus, host_id: uuid.UUID, timeout: float = 10.0) -> HostAccess:
    try:
        access = await ask_access(bus, host_id, timeout=timeout, what="QEMU host")
    except InventoryDidNotAnswer as exc:
        raise HostUnavailable(str(exc)) from None
    except AccessRefused as exc:
        raise HostUnavailable(str(exc), hint=exc.hint, retryable=False) from None
    if access.view.qemu is None:
        raise HostUnavailable(f"{access.name} is not a registered QEMU host (no QEMU "
                              "capabilities)", retryable=False)
    return HostAccess(host_id=host_id, view=access.view, creds=access.creds)
