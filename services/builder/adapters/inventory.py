"""Credentials of a build server, asked from inventory just before they are needed.

They stay in memory for the attempt only and are never logged (``Credentials`` masks
itself in ``repr``).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from labfleet.shared.bus import Bus
from labfleet.shared.events.resource import CredentialsReply, GetCredentials, ResourceView
from labfleet.shared.ssh import Credentials

from ..domain.errors import BuildError


class CredentialsUnavailable(Exception):
    """Inventory did not answer; worth asking again later."""


@dataclass(frozen=True)
class ServerAccess:
    view: ResourceView
    creds: Credentials

    @property
    def host(self) -> str:
        return self.view.ssh.address

    @property
    def port(self) -> int:
        return self.view.ssh.port

    @property
    def host_key(self) -> str | None:
        return self.view.ssh.host_key


async def server_access(bus: Bus, server_id: uuid.UUID, timeout: float = 10.0) -> ServerAccess:
    try:
        reply = await bus.request(GetCredentials(resource_id=server_id), CredentialsReply,
                                  timeout=timeout)
    except (NoRespondersError, NatsTimeout, TimeoutError) as exc:
        raise CredentialsUnavailable(
            f"inventory did not answer for the credentials of build server {server_id} "
            f"({type(exc).__name__})") from None
    if not reply.ok or reply.resource is None:
        why = reply.error.message if reply.error else "no server record in the reply"
        # the server is gone from inventory: another server may still build it
        raise BuildError("server_unavailable",
                         f"cannot get the credentials of build server {server_id}: {why}",
                         hint=reply.error.hint if reply.error else None, retryable=True)
    view = reply.resource
    return ServerAccess(view=view, creds=Credentials(
        username=view.ssh.username,
        password=reply.password.get_secret_value() if reply.password else None,
        private_key=reply.private_key.get_secret_value() if reply.private_key else None))
