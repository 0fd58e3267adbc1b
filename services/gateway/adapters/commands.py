"""Sending commands on behalf of a person, with the failure turned into an API error.

The gateway knows which service answers which subject only to say *who* is missing when
nobody answers; it never depends on that service's internals.
"""
from __future__ import annotations

import logging
from typing import TypeVar

import nats.errors
from labfleet.shared.bus import Bus
from labfleet.shared.events.envelope import Command, Reply
from pydantic import ValidationError

from ..domain.errors import ApiError, service_timeout, service_unavailable

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Reply)

#: subject prefix → the service that answers it (first match wins)
ANSWERED_BY: tuple[tuple[str, str], ...] = (
    ("resource.cmd.", "inventory"),
    ("health.cmd.", "monitor"),
    ("build.cmd.submit", "scheduler"),
    ("request.cmd.", "scheduler"),
    ("build.cmd.", "builder"),
    ("artifact.cmd.", "builder"),
    ("env.cmd.create", "scheduler"),
    ("env.cmd.hosts", "scheduler"),
    ("env.cmd.", "deployer"),
    ("alert.cmd.", "alerter"),
)


def service_for(subject: str) -> str:
    if subject.startswith("system.cmd.ping."):
        return subject.rsplit(".", 1)[1]
    for prefix, service in ANSWERED_BY:
        if subject.startswith(prefix):
            return service
    return subject.split(".", 1)[0]


async def ask(bus: Bus, command: Command, reply_type: type[R], *, timeout: float = 10.0,
              subject: str | None = None) -> R:
    """Send ``command``; raise :class:`ApiError` (503/504/502) when no good answer comes."""
    subj = subject or command.subject
    service = service_for(subj)
    try:
        return await bus.request(command, reply_type, timeout=timeout, subject=subj)
    except nats.errors.NoRespondersError:
        raise service_unavailable(service, subj) from None
    except nats.errors.TimeoutError:
        raise service_timeout(service, subj, timeout) from None
    except ValidationError as exc:
        log.error("unreadable reply", extra={"subject": subj, "error": str(exc)[:500]})
        raise ApiError(502, "bad_reply", f"the {service} service answered {subj} with a reply "
                       "the gateway cannot read", hint="the services may be at different "
                       "versions; check both are up to date") from None


async def ask_ok(bus: Bus, command: Command, reply_type: type[R], *, timeout: float = 10.0,
                 subject: str | None = None) -> R:
    """Like :func:`ask`, and an ``ok=False`` reply becomes the matching 4xx."""
    reply = await ask(bus, command, reply_type, timeout=timeout, subject=subject)
    if not reply.ok:
        if reply.error is None:
            raise ApiError(422, "refused", f"{command.subject} was refused without a reason")
        raise ApiError.from_info(reply.error)
    return reply
