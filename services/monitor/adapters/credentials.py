"""SSH credentials asked once from the inventory and kept in memory only.

They are never written to the monitor's database, KV or logs.  A host that rejects them
has them forgotten, so the next poll asks again (the admin may have changed them).
"""
from __future__ import annotations

import asyncio
import uuid

from labfleet.shared.access import AccessRefused, InventoryDidNotAnswer, ask_access
from labfleet.shared.bus import Bus
from labfleet.shared.ssh import Credentials


class CredentialsUnavailable(Exception):
    """The inventory could not say how to log in; not the host's fault."""

    def __init__(self, message: str, code: str = "credentials_unavailable") -> None:
        super().__init__(message)
        self.code = code


class CredentialCache:
    def __init__(self, bus: Bus, *, timeout: float = 5.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self._known: dict[uuid.UUID, Credentials] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}

    async def get(self, resource_id: uuid.UUID) -> Credentials:
        known = self._known.get(resource_id)
        if known is not None:
            return known
        async with self._locks.setdefault(resource_id, asyncio.Lock()):
            if resource_id not in self._known:
                self._known[resource_id] = await self._ask(resource_id)
            return self._known[resource_id]

    async def _ask(self, resource_id: uuid.UUID) -> Credentials:
        try:
            return (await ask_access(self.bus, resource_id, timeout=self.timeout)).creds
        except InventoryDidNotAnswer as exc:
            raise CredentialsUnavailable(str(exc)) from None
        except AccessRefused as exc:
            raise CredentialsUnavailable(exc.error.message if exc.error else "no credentials",
                                         exc.code) from None

    def forget(self, resource_id: uuid.UUID) -> None:
        self._known.pop(resource_id, None)
        self._locks.pop(resource_id, None)
