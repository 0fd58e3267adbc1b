"""A QEMU host's view and credentials, asked from inventory just before they are needed.

They stay in memory (and in the 0700 libvirt access directory) only; never logged.
"""
from __future__ import annotations

import uuid

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from labfleet.shared.bus import Bus
from labfleet.shared.events.resource import CredentialsReply, GetCredentials
from labfleet.shared.ssh import Credentials

from .libvirt_host import HostAccess


class HostUnavailable(Exception):
    def __init__(self, message: str, hint: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.hint = hint
        self.retryable = retryable


async def host_access(bus: Bus, host_id: uuid.UUID, timeout: float = 10.0) -> HostAccess:
    try:
        reply = await bus.request(GetCredentials(resource_id=host_id), CredentialsReply,
                                  timeout=timeout)
    except (NoRespondersError, NatsTimeout, TimeoutError) as exc:
        raise HostUnavailable(f"inventory did not answer for the credentials of QEMU host "
                              f"{host_id} ({type(exc).__name__})") from None
    if not reply.ok or reply.resource is None:
        why = reply.error.message if reply.error else "no host record in the reply"
        raise HostUnavailable(f"cannot get the credentials of QEMU host {host_id}: {why}",
                              hint=reply.error.hint if reply.error else None, retryable=False)
    view = reply.resource
    if view.qemu is None:
        raise HostUnavailable(f"{view.name} is not a registered QEMU host (no QEMU "
                              "capabilities)", retryable=False)
    return HostAccess(host_id=host_id, view=view, creds=Credentials(
        username=view.ssh.username,
        password=reply.password.get_secret_value() if reply.password else None,
        private_key=reply.private_key.get_secret_value() if reply.private_key else None))
