"""NATS request/reply subscribers: bytes in → command → handler → reply out.

The payload is validated here rather than by faststream's argument injection, and the
refusal of an invalid command comes in the command's own reply type; a handler that
raises is answered with ``internal_error`` by the bus (``Bus.on_command``).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.nats import NatsMessage
from labfleet.shared.bus import Bus, invalid_request, reveal_secrets_json
from labfleet.shared.events.envelope import Command, Reply
from labfleet.shared.events.resource import (
    AcceptHostKey,
    CheckHostKey,
    HostKeyReply,
    CredentialsReply,
    GetCredentials,
    GetResource,
    ListResources,
    RegisterBuildServer,
    RegisterQemuHost,
    RegistrationReply,
    Decommission,
    RemoveResource,
    ResourceListReply,
    SetMaintenance,
    SetResourceOptions,
    ResourceReply,
)
from pydantic import ValidationError

from . import handlers, host_key_handlers, lifecycle_handlers, qemu_handlers
from .handlers import InventoryDeps

#: registrations probed at once; each holds one SSH connection while it runs
REGISTRATIONS_AT_ONCE = 8

C = TypeVar("C", bound=Command)
R = TypeVar("R", bound=Reply)


def serve(bus: Bus, command_type: type[C], reply_type: type[R],
          handler: Callable[[C, InventoryDeps], Awaitable[R]], deps: InventoryDeps, *,
          reveal_secrets: bool = False, concurrency: int = 4) -> None:
    @bus.on_command(command_type, max_workers=concurrency)
    async def answer(msg: NatsMessage) -> str:
        try:
            command = command_type.model_validate_json(msg.body)
        except ValidationError as exc:
            reply: Reply = invalid_request(reply_type, exc)
        else:
            # a handler that raises is answered with internal_error by the bus
            reply = await handler(command, deps)
        # credentials travel in clear only on this internal reply, never elsewhere
        return reveal_secrets_json(reply) if reveal_secrets else reply.model_dump_json()


def register_commands(bus: Bus, deps: InventoryDeps,
                      qemu: qemu_handlers.QemuHostDeps | None = None) -> None:
    # a registration waits on SSH (up to the connect timeout for a dead host): several at once
    serve(bus, RegisterBuildServer, RegistrationReply, handlers.register_build_server, deps,
          concurrency=REGISTRATIONS_AT_ONCE)
    if qemu is not None:
        serve(bus, RegisterQemuHost, RegistrationReply, qemu_handlers.register_qemu_host,
              qemu, concurrency=REGISTRATIONS_AT_ONCE)  # type: ignore[arg-type]
    serve(bus, GetResource, ResourceReply, handlers.get_resource, deps)
    serve(bus, ListResources, ResourceListReply, handlers.list_resources, deps)
    serve(bus, RemoveResource, ResourceReply, handlers.remove_resource, deps)
    serve(bus, SetMaintenance, ResourceReply, lifecycle_handlers.set_maintenance, deps)
    serve(bus, SetResourceOptions, ResourceReply, lifecycle_handlers.set_options, deps)
    serve(bus, Decommission, ResourceReply, lifecycle_handlers.decommission, deps)
    # each asks the host for its key over SSH (up to the connect timeout)
    serve(bus, CheckHostKey, HostKeyReply, host_key_handlers.check_host_key, deps)
    serve(bus, AcceptHostKey, HostKeyReply, host_key_handlers.accept_host_key, deps)
    # asked by every monitor and builder for every host they log in to
    serve(bus, GetCredentials, CredentialsReply, handlers.get_credentials, deps,
          reveal_secrets=True, concurrency=16)
