"""Bus wiring: JetStream streams, durable consumers with a deliberate ack policy, publishing.

Why not faststream's defaults: for NATS a handler that raises has its message discarded.
Here every durable consumer acknowledges by hand through :class:`RedeliveryMiddleware`:

* success → ``ack``;
* a handler error → ``nak(delay)`` with back-off, up to ``max_deliver`` deliveries;
* the last delivery failing, or a payload that can never be valid → the message is copied
  to ``deadletter.<stream>.<consumer>`` (stream DEADLETTER) with the error, then ``term``-ed.

Facts travel on JetStream (one stream per domain, ``<domain>.*``); commands are core NATS
request/reply on ``<domain>.cmd.<verb>`` where a person waits for the answer (each one
answered, see ``commands``).  Every publish sets ``Nats-Msg-Id`` to the event id so that
a retried publish is stored once.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.js.errors
from faststream import AckPolicy
from faststream.security import BaseSecurity
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsMessage,
    NatsNKey,
    NatsRouter,
    PullSub,
    StorageType,
    StreamConfig,
)
from nats.js.api import RetentionPolicy
from opentelemetry import propagate
from pydantic import BaseModel

from .commands import (  # noqa: F401 - re-exported beside error_reply
    CommandMiddleware,
    always_answered,
    error_reply,
    invalid_request,
)
from .dispatch import (  # noqa: F401 - re-exported: handlers import them from the bus
    BATCH_TRANSACTIONS,
    ORDERING_FIELDS,
    PIPELINED_BATCHES,
    Delivery,
    Dispatcher,
    PermanentError,
    Registration,
    backoff_for,
    dead_letter,
    hand_over_partial_batches,
    normalise_fetch_timeouts,
)
from .events.envelope import Command, Event, Message, Reply
from .natsauth.identities import connect_options
from .natsauth.permissions import inbox_prefix
from .settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=BaseModel)

DAY = 24 * 3600.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float = 30 * DAY
    #: kept short for high-rate streams; dedupe only has to cover a publisher's retries
    duplicate_window_s: float = 120.0
    max_msgs_per_subject: int = -1


#: one stream per domain; events are two tokens (``build.succeeded``) so ``<domain>.*``
#: never captures the three-token commands (``build.cmd.submit``).
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("RESOURCE", ["resource.*"]),
    StreamSpec("HEALTH", ["health.*"]),
    StreamSpec("BUILD", ["build.*"]),
    StreamSpec("ARTIFACT", ["artifact.*"]),
    StreamSpec("REQUEST", ["request.*"]),
    StreamSpec("POLICY", ["policy.*"]),
    StreamSpec("ENV", ["env.*"]),
    StreamSpec("DEPLOY", ["deploy.*"]),
    StreamSpec("ALERT", ["alert.*"]),
    #: jobs submitted by external tooling (a CI system); its own id dedupes retries
    StreamSpec("JOB", ["job.*"]),
    StreamSpec("SAMPLES", ["sample.>"], max_age_s=DAY),
    StreamSpec("LOGS", ["log.>"], max_age_s=30 * DAY),
    StreamSpec("DEADLETTER", ["deadletter.>"], max_age_s=90 * DAY),
    StreamSpec("BENCH", ["bench.*"], max_age_s=3600.0),
)


def stream_for_subject(subject: str) -> StreamSpec:
    head = subject.split(".", 1)[0]
    for spec in STREAMS:
        if any(s.split(".", 1)[0] == head for s in spec.subjects):
            return spec
    raise LookupError(f"no stream carries subject {subject!r}")


async def ensure_streams(js: Any, replicas: int = 1) -> None:
    """Create or update every stream; safe to call from each service at start."""
    for spec in STREAMS:
        config = StreamConfig(
            name=spec.name,
            subjects=spec.subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=spec.max_age_s,
            duplicate_window=spec.duplicate_window_s,
            num_replicas=replicas,
            max_msgs_per_subject=spec.max_msgs_per_subject,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # exists with other settings: bring it to ours (subjects, ages)
            await js.update_stream(config)


def event_headers(event: Message, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers: dict[str, str] = {"Nats-Msg-Id": str(event.event_id)}
    if not event.trace:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        event.trace = carrier
    headers.update(event.trace)
    if extra:
        headers.update(extra)
    return headers


@dataclass
class Bus:
    """The one object a service uses to talk to the others."""

    settings: Settings
    service: str
    broker: NatsBroker
    events: NatsRouter
    commands: NatsRouter
    dispatcher: Dispatcher
    _js: Any = field(default=None, init=False)

    @classmethod
    def create(cls, settings: Settings, service: str, **broker_kwargs: Any) -> Bus:
        from faststream.nats.opentelemetry import NatsTelemetryMiddleware

        normalise_fetch_timeouts()
        hand_over_partial_batches()

        # a comma-separated URL lists the cluster's seed servers; the service logs in
        # with its own NATS identity (see shared/natsauth)
        servers, login = connect_options(settings, service)
        seed, tls = login.pop("nkeys_seed", None), login.pop("tls", None)
        if seed is not None:
            broker_kwargs.setdefault("security", NatsNKey.from_file(seed, ssl_context=tls))
        elif tls is not None:
            broker_kwargs.setdefault("security", BaseSecurity(ssl_context=tls))
        broker = NatsBroker(
            servers,
            middlewares=[NatsTelemetryMiddleware()],
            graceful_timeout=15.0,
            # per-message "Received/Processed" lines cost more than a handler at thousands
            # of events per second; they are kept at DEBUG, errors are logged by us
            log_level=logging.DEBUG,
            **{**login, **broker_kwargs},
        )
        dispatcher = Dispatcher(settings)
        events = NatsRouter(middlewares=[dispatcher.middleware()])
        commands = NatsRouter(middlewares=[CommandMiddleware])
        return cls(settings=settings, service=service, broker=broker, events=events,
                   commands=commands, dispatcher=dispatcher)

    # ---- wiring -------------------------------------------------------------------

    def on_event(
        self,
        event_type: type[Event],
        *,
        purpose: str,
        subject: str | None = None,
        batch_size: int = 64,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        max_workers: int | None = None,  # accepted for symmetry; a batch is the unit of work
        detached: bool = False,
        batch_db: Any = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """Register a durable consumer ``<service>-<purpose>`` for ``event_type``.

        The handler is ``async def handler(event: EventType, msg: Delivery)``; it must be
        idempotent (see ``Database.consume``).  Messages are fetched in batches; within a
        batch the events of one entity (same ``build_id``/``resource_id``/...) are handled
        in order, different entities concurrently.

        ``detached=True`` is for handlers that run for minutes (a build, a flash): each
        message is handled in a task of its own and acknowledged when that task ends, while
        the consumer goes on fetching; the handler calls ``msg.in_progress()`` meanwhile.

        ``batch_db=<Database>`` is for quick handlers whose only effects are writes to that
        database and events it emits: a fetched batch is then handled in one transaction
        (``BATCH_TRANSACTIONS``), several batches at once (``PIPELINED_BATCHES``, entity
        order kept)
        (``db.consume``/``db.transaction``/``tx.emit`` inside the handler join it; the
        batch's idempotency records are claimed in one statement, writes made with
        ``tx.defer`` go as one pipelined statement each and the outbox rows together at
        the end), which saves a commit and several round trips per event.  If any handler
        of the batch raises, the transaction is
        rolled back and the batch is handled message by message as usual, so a handler
        must not have effects outside the database (it may run twice).
        """
        if detached and batch_db is not None:
            raise ValueError("a detached handler cannot share a batch transaction")
        subj = subject or event_type.subject
        spec = stream_for_subject(subj)
        durable = f"{self.service}-{purpose}"
        config = ConsumerConfig(
            durable_name=durable,
            max_deliver=self.settings.max_deliver + 1,  # we term before the server gives up
            ack_wait=self.settings.ack_wait_s,
            deliver_policy=deliver_policy,
            max_ack_pending=max(1000, batch_size * 16),
        )
        subscriber = self.events.subscriber(
            subj,
            stream=JStream(spec.name, declare=False),
            durable=durable,
            config=config,
            pull_sub=PullSub(batch_size=batch_size, timeout=0.5, batch=True),
            ack_policy=AckPolicy.MANUAL,
            title=f"{durable}:{subj}",
            # fetched messages arrive on this identity's private inbox (faststream would
            # use the shared ``_INBOX.``, which no service identity may subscribe to)
            inbox_prefix=f"{inbox_prefix(self.service)}.".encode(),
        )

        def register(fn: Callable[..., Awaitable[Any]]) -> Any:
            if durable in self.dispatcher.registrations:
                raise ValueError(f"consumer {durable!r} is registered twice")
            self.dispatcher.registrations[durable] = Registration(event_type, fn, durable,
                                                                 detached, batch_db)
            subscriber(fn)  # for the consumer itself and the AsyncAPI document
            return fn

        return register

    def on_command(self, command_type: type[Command], subject: str | None = None, *,
                   max_workers: int = 1) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """A request/reply handler; replicas share commands through a queue group.

        Requests are answered one at a time unless ``max_workers`` > 1: a command that
        waits on something slow (an SSH probe of a host) needs several, or one unreachable
        host holds up every other request of that kind.
        """
        subj = subject or command_type.subject
        subscriber = self.commands.subscriber(subj, queue=f"{self.service}-cmd",
                                              title=f"{self.service}:{subj}",
                                              max_workers=max_workers)

        def register(fn: Callable[..., Awaitable[Any]]) -> Any:
            return subscriber(always_answered(fn, subj, self.service,
                                              lambda: self.nc.max_payload))

        return register

    def include(self) -> None:
        self.broker.include_router(self.events)
        self.broker.include_router(self.commands)

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.connect()
        await ensure_streams(self.js, self.settings.stream_replicas)
        await self.broker.start()
        # a round trip to the server: every SUB sent before it has been processed, so a
        # request sent once the service says it has started finds its command handlers
        # (without it, a request from another connection could beat the SUB: no responders)
        await self.nc.flush(timeout=10)

    async def stop(self) -> None:
        await self.broker.stop()
        await self.dispatcher.cancel_detached()

    @property
    def nc(self) -> Any:
        return self.broker._connection  # nats.aio.client.Client

    @property
    def js(self) -> Any:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    # ---- talking ------------------------------------------------------------------

    async def publish(self, event: Event, subject: str | None = None) -> None:
        """Publish a fact now (for services without a database transaction to join)."""
        subj = subject or event.subject
        await self.js.publish(subj, event.model_dump_json().encode(), headers=event_headers(event))

    async def request(self, command: Command, reply_type: type[R], *, timeout: float = 30.0,
                      subject: str | None = None) -> R:
        """Send a command and wait for its reply; raises ``NoResponders`` if nobody serves it."""
        subj = subject or command.subject
        payload = reveal_secrets_json(command)
        msg = await self.nc.request(subj, payload.encode(), timeout=timeout,
                                    headers=event_headers(command))
        return reply_type.model_validate_json(msg.data)


def reveal_secrets_json(model: BaseModel) -> str:
    """JSON with ``SecretStr`` values in clear, for the internal request that needs them.

    pydantic masks secrets when dumping; a command that carries a password to the one
    service that stores it (encrypted) must send the real value.
    """
    import json

    from pydantic import SecretStr

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return {k: reveal(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [reveal(v) for v in value]
        return value

    data = reveal(model)
    return json.dumps(data, default=str)


__all__ = [
    "STREAMS", "Bus", "Delivery", "PermanentError", "Reply", "StreamSpec", "backoff_for", "ensure_streams",
    "CommandMiddleware", "error_reply", "event_headers", "invalid_request", "reveal_secrets_json",
    "stream_for_subject",
]
