"""Credentials of a build server, asked from inventory just before they are needed
(:func:`labfleet.shared.access.ask_access`); in memory for the attempt only."""
from __future__ import annotations

import uuid

from labfleet.shared.access import (
    AccessRefused,
    InventoryDidNotAnswer,
    ResourceAccess,
    ask_access,
)
from labfleet.shared.bus import Bus

from ..domain.errors import BuildError

#: a build server's view and credentials
ServerAccess = ResourceAccess


class CredentialsUnavailable(Exception):
    """Inventory did not answer; worth asking again later."""


async def server_access(bus: Bus, server_id: uuid.UUID, timeout: float = 10.0) -> ServerAccess:
    try:
        return await ask_access(bus, server_id, timeout=timeout, what="build server")
    except InventoryDidNotAnswer as exc:
        raise CredentialsUnavailable(str(exc)) from None
    except AccessRefused as exc:
        # the server is gone from inventory: another server may still build it
        raise BuildError("server_unavailable", str(exc), hint=exc.hint,
                         retryable=True) from None
