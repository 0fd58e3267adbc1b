"""Asking inventory how to log in to a resource, just before it is needed.

The one client of ``resource.cmd.credentials`` (only the services that log in to hosts
may send it): the answer stays in memory, in a :class:`ResourceAccess`; ``Credentials``
masks itself in ``repr`` and nothing here logs it.  Each caller turns the two ways this can
fail into its own words: :class:`InventoryDidNotAnswer` (worth asking again) and
:class:`AccessRefused` (inventory answered no: the resource is gone or has no login).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import nats.errors

from .bus import Bus
from .events.envelope import ErrorInfo
from .events.resource import CredentialsReply, GetCredentials, ResourceView
from .ssh import Credentials


class AccessUnavailable(Exception):
    pass


class InventoryDidNotAnswer(AccessUnavailable):
    pass


class AccessRefused(AccessUnavailable):
    def __init__(self, message: str, error: ErrorInfo | None) -> None:
        super().__init__(message)
        self.error = error

    @property
    def code(self) -> str:
        return self.error.code if self.error else "credentials_unavailable"

    @property
    def hint(self) -> str | None:
        return self.error.hint if self.error else None


@dataclass(frozen=True)
class ResourceAccess:
    view: ResourceView
    creds: Credentials

    @property
    def resource_id(self) -> uuid.UUID:
        return self.view.resource_id

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def host(self) -> str:
        return self.view.ssh.address

    @property
    def port(self) -> int:
        return self.view.ssh.port

    @property
    def host_key(self) -> str | None:
        return self.view.ssh.host_key


async def ask_access(bus: Bus, resource_id: uuid.UUID, *, timeout: float = 10.0,
                     what: str = "resource") -> ResourceAccess:
    """``what`` names the resource in messages ("build server", "QEMU host")."""
    try:
        reply = await bus.request(GetCredentials(resource_id=resource_id), CredentialsReply,
                                  timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as exc:
        raise InventoryDidNotAnswer(
            f"inventory did not answer {GetCredentials.subject} for {what} {resource_id} "
            f"within {timeout:g} s ({type(exc).__name__})") from None
    if not reply.ok or reply.resource is None:
        why = reply.error.message if reply.error else f"no {what} record in the reply"
        raise AccessRefused(f"cannot get the credentials of {what} {resource_id}: {why}",
                            reply.error)
    view = reply.resource
    return ResourceAccess(view=view, creds=Credentials(
        username=view.ssh.username,
        password=reply.password.get_secret_value() if reply.password else None,
        private_key=reply.private_key.get_secret_value() if reply.private_key else None))
