"""Bus subscribers: translate a message into a handler call, nothing more.

The resource projection is one durable consumer, ``monitor-resources``, on ``resource.*``
(registered, updated, removed — and later facts it may ignore); the subject says which
model the payload is.  Commands are validated here so that bad input is answered, not
dropped while the requester waits.
"""
from __future__ import annotations

import logging
import uuid

from faststream.nats import NatsMessage
from labfleet.shared.bus import Bus, Delivery, PermanentError, error_reply
from labfleet.shared.events.envelope import Event
from labfleet.shared.events.health import (
    GetHostDetails,
    GetSampleHistory,
    HostDetailsReply,
    SampleHistoryReply,
)
from labfleet.shared.events.resource import (
    ResourceRegistered,
    ResourceRemoved,
    ResourceUpdated,
    ResourceView,
)
from pydantic import ValidationError, model_validator

from . import handlers
from .handlers import MonitorDeps
from .host_details import host_details

log = logging.getLogger(__name__)

RESOURCE_EVENTS: dict[str, type[Event]] = {
    e.subject: e for e in (ResourceRegistered, ResourceUpdated, ResourceRemoved)
}


class ResourceFact(Event):
    """What every ``resource.*`` event has in common, for the one durable consumer.

    Not a message of its own: the bus validates each delivery against this before the
    handler parses it as the contract its subject names.  ``resource_id`` is filled from
    the resource view too, so the bus keeps the events of one resource in order.
    """

    resource_id: uuid.UUID | None = None
    resource: ResourceView | None = None

    @model_validator(mode="after")
    def _resource_id_from_view(self) -> ResourceFact:
        if self.resource_id is None and self.resource is not None:
            self.resource_id = self.resource.resource_id
        return self


def register(bus: Bus, deps: MonitorDeps) -> None:
    @bus.on_event(ResourceFact, purpose="resources", subject="resource.*")
    async def on_resource_event(fact: ResourceFact, msg: Delivery) -> None:
        event_type = RESOURCE_EVENTS.get(msg.subject)
        if event_type is None:
            return  # a resource fact the monitor has no use for
        try:
            event = event_type.model_validate_json(msg.raw_message.data)
        except ValidationError as exc:
            raise PermanentError(f"{msg.subject} does not match its contract: {exc}") from None
        await handlers.apply_resource_event(event, deps)  # type: ignore[arg-type]

    @bus.on_command(GetHostDetails, max_workers=4)
    async def on_host_details(msg: NatsMessage) -> str:
        try:
            cmd = GetHostDetails.model_validate_json(msg.body)
        except ValidationError as exc:
            return error_reply(HostDetailsReply, "invalid_request", str(exc.errors()[0]["msg"]),
                               hint="send a resource_id").model_dump_json()
        try:
            reply = await host_details(cmd, deps)
        except Exception:
            log.exception("host details request failed")
            reply = error_reply(HostDetailsReply, "internal_error",
                                "the monitor failed to read the host's details",
                                hint="see the monitor's log; retrying may help")
        return reply.model_dump_json()

    @bus.on_command(GetSampleHistory, max_workers=4)
    async def on_history(msg: NatsMessage) -> str:
        try:
            cmd = GetSampleHistory.model_validate_json(msg.body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or None
            return error_reply(SampleHistoryReply, "invalid_request",
                               f"{where + ': ' if where else ''}{first.get('msg')}",
                               hint="correct the field and send again",
                               field_name=where).model_dump_json()
        try:
            reply = await handlers.sample_history(cmd, deps)
        except Exception:
            log.exception("history request failed")
            reply = error_reply(SampleHistoryReply, "internal_error",
                                "the monitor failed to read the sample history",
                                hint="see the monitor's log; retrying may help")
        return reply.model_dump_json()
