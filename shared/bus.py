"""Bus wiring: JetStream streams, durable consumers with a deliberate ack policy, publishing.

Why not faststream's defaults: for NATS a handler that raises has its message discarded.
Here every durable consumer acknowledges by hand through :class:`RedeliveryMiddleware`:

* success → ``ack``;
* a handler error → ``nak(delay)`` with back-off, up to ``max_deliver`` deliveries;
* the last delivery failing, or a payload that can never be valid → the message is copied
  to ``deadletter.<stream>.<consumer>`` (stream DEADLETTER) with the error, then ``term``-ed.

Facts travel on JetStream (one stream per domain, ``<domain>.*``); commands are core NATS
request/reply on ``<domain>.cmd.<verb>`` where a person waits for the answer.  Every
publish sets ``Nats-Msg-Id`` to the event id so that a retried publish is stored once.
"""
from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.js.errors
from faststream import AckPolicy, BaseMiddleware
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsMessage,
    NatsRouter,
    PullSub,
    StorageType,
    StreamConfig,
)
from nats.js.api import RetentionPolicy
from opentelemetry import propagate, trace
from pydantic import BaseModel, ValidationError

from .events.envelope import Command, Event, Message, Reply
from .events.system import DeadLettered
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


def backoff_for(delivery: int, schedule: list[float]) -> float:
    """Delay before redelivery number ``delivery + 1`` (1-based deliveries)."""
    if not schedule:
        return 1.0
    return schedule[min(delivery - 1, len(schedule) - 1)]


def normalise_fetch_timeouts() -> None:
    """Make a pull fetch that times out always raise ``nats.errors.TimeoutError``.

    nats-py's ``PullSubscription.fetch`` raises a bare ``asyncio.TimeoutError`` when its
    deadline passes between the no-wait probe and the lingering request, while
    faststream's pull loop only catches ``nats.errors.TimeoutError``.  The bare one kills
    the loop and drops the messages fetched so far in that batch: unacknowledged, they
    come back only after AckWait (an event seconds late, at random).  Idempotent.
    """
    import functools

    import nats.errors
    from nats.js.client import JetStreamContext

    pull = JetStreamContext.PullSubscription
    if getattr(pull.fetch, "_labfleet_normalised", False):
        return
    original = pull.fetch

    @functools.wraps(original)
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError:
            raise nats.errors.TimeoutError from None

    fetch._labfleet_normalised = True  # type: ignore[attr-defined]
    pull.fetch = fetch  # type: ignore[method-assign]


class PermanentError(Exception):
    """Raise from a handler when retrying can never help: straight to the dead letters."""


#: fields whose value orders the events of one entity; events of one entity in a batch are
#: handled one after another, different entities concurrently
ORDERING_FIELDS = ("build_id", "resource_id", "request_id", "env_id", "pipeline_id")


#: how many transactions a fetched batch is split into when handled with ``batch_db``
BATCH_TRANSACTIONS = 4
#: fetched batches of a ``batch_db`` consumer handled at once (the next fetch goes on
#: while earlier batches wait on the database)
PIPELINED_BATCHES = 4


class Delivery:
    """One delivered JetStream message, handed to a handler beside its event.

    Offers what a handler may need of the transport: ``in_progress()`` during long steps
    (so AckWait does not expire), the delivery count, headers and subject.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # faststream documents a handler (AsyncAPI) from its signature; this argument is
        # the transport, not part of the message, so its schema accepts anything
        from pydantic_core import core_schema

        return core_schema.any_schema()

    @property
    def raw_message(self) -> Any:
        return self.raw

    @property
    def subject(self) -> str:
        return str(self.raw.subject)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.raw.headers or {})

    @property
    def delivery(self) -> int:
        return int(self.raw.metadata.num_delivered)

    async def in_progress(self) -> None:
        await self.raw.in_progress()


@dataclass(frozen=True)
class Registration:
    event_type: type[Event]
    handler: Callable[[Any, Delivery], Awaitable[Any]]
    durable: str
    #: handled in a task of its own, acknowledged when that ends (see ``Bus.on_event``)
    detached: bool = False
    #: a database whose batch unit of work wraps a whole fetched batch (see ``Bus.on_event``)
    batch_db: Any = None


class Dispatcher:
    """Validates, handles and acknowledges each message of a fetched batch.

    faststream runs the durable pull consumer (fetch loop, consumer config, telemetry and
    the AsyncAPI document, which shows each handler's event model); the per-message work is
    here because a batch must never succeed or fail as a whole: one poison message is
    dead-lettered, its neighbours are handled and acknowledged.

    * success → ``ack``;
    * a handler error → ``nak(delay)`` with back-off, up to ``max_deliver`` deliveries;
    * the last delivery failing, or a payload that can never be valid (or a handler raising
      :class:`PermanentError`) → copied to ``deadletter.<stream>.<consumer>`` with the
      error, then ``term``-ed.
    """

    def __init__(self, settings: Settings) -> None:
        self.max_deliver = settings.max_deliver
        self.schedule = list(settings.redelivery_backoff_s)
        self.registrations: dict[str, Registration] = {}
        self._tracer = trace.get_tracer("labfleet.bus")
        self._detached: set[asyncio.Task[None]] = set()
        self._in_flight = asyncio.Semaphore(PIPELINED_BATCHES)
        self._tails: dict[str, asyncio.Future[None]] = {}

    def middleware(self) -> type[BaseMiddleware]:
        dispatcher = self

        class DispatchMiddleware(BaseMiddleware):
            async def consume_scope(self, call_next: Callable[..., Awaitable[Any]], msg: Any) -> Any:
                raws = msg.raw_message
                if not isinstance(raws, list):
                    return await call_next(msg)
                await dispatcher.dispatch(raws)
                return None

        return DispatchMiddleware

    async def dispatch(self, raws: list[Any]) -> None:
        groups: dict[str, list[tuple[Any, Registration, Any]]] = {}
        for raw in raws:
            meta = raw.metadata
            reg = self.registrations.get(meta.consumer)
            if reg is None:  # a consumer of ours that this process does not serve: let it go
                await raw.nak(delay=1.0)
                continue
            try:
                event = reg.event_type.model_validate_json(raw.data)
            except ValidationError as exc:
                await self._fail(raw, exc, permanent=True)
                continue
            if reg.detached:
                task = asyncio.create_task(self._run_one(raw, reg, event),
                                           name=f"{reg.durable}:{event.event_id}")
                self._detached.add(task)
                task.add_done_callback(self._detached.discard)
                continue
            key = next((str(getattr(event, f)) for f in ORDERING_FIELDS if hasattr(event, f)),
                       str(event.event_id))
            groups.setdefault(key, []).append((raw, reg, event))
        if not groups:
            return
        first = next(iter(groups.values()))[0][1]
        if first.batch_db is not None and sum(map(len, groups.values())) > 1 and all(
                reg.batch_db is first.batch_db for g in groups.values() for _, reg, _ in g):
            # a few transactions side by side, each over whole entity groups (order kept)
            chunks: list[list[list[tuple[Any, Registration, Any]]]] = [
                [] for _ in range(min(BATCH_TRANSACTIONS, len(groups)))]
            for i, group in enumerate(groups.values()):
                chunks[i % len(chunks)].append(group)
            await self._pipeline(first.batch_db, chunks, list(groups))
            return
        await asyncio.gather(*(self._run_group(g) for g in groups.values()))

    async def _pipeline(self, db: Any, chunks: list[list[list[tuple[Any, Registration, Any]]]],
                        keys: list[str]) -> None:
        """Handle a batch in the background so the consumer fetches the next one meanwhile.

        At most ``PIPELINED_BATCHES`` are in flight (the fetch loop waits for a free place);
        an entity's events still go in order: a batch first waits for the earlier batches
        that hold events of the same entities (a chain of futures per entity key, linked
        here, before anything runs, in the order the batches were fetched).
        """
        await self._in_flight.acquire()
        loop = asyncio.get_running_loop()
        before = [t for t in (self._tails.get(k) for k in keys) if t is not None]
        mine = loop.create_future()
        for key in keys:
            self._tails[key] = mine

        async def run() -> None:
            try:
                if before:
                    await asyncio.gather(*before)
                await asyncio.gather(*(self._run_chunk(db, chunk) for chunk in chunks))
            finally:
                if not mine.done():
                    mine.set_result(None)
                for key in keys:
                    if self._tails.get(key) is mine:
                        del self._tails[key]
                self._in_flight.release()

        task = asyncio.create_task(run(), name="labfleet-batch")
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _run_chunk(self, db: Any, chunk: list[list[tuple[Any, Registration, Any]]]) -> None:
        items = [item for group in chunk for item in group]
        if len(items) > 1 and await self._run_batch(db, items):
            return
        await asyncio.gather(*(self._run_group(g) for g in chunk))

    async def _run_batch(self, db: Any, items: list[tuple[Any, Registration, Any]]) -> bool:
        """Handle a whole batch in one database transaction; False if any handler raised.

        The transaction is then rolled back (no effect at all) and the caller handles the
        batch message by message, each in its own transaction with its own ack or retry.
        """
        try:
            async with db.batch():
                for raw, reg, event in items:
                    ctx = propagate.extract(dict(raw.headers or {}))
                    with self._tracer.start_as_current_span(
                        f"{raw.subject} process", context=ctx, kind=trace.SpanKind.CONSUMER,
                        attributes={"messaging.system": "nats",
                                    "messaging.destination.name": raw.subject,
                                    "messaging.consumer.group.name": reg.durable,
                                    "messaging.message.id": str(event.event_id),
                                    "messaging.batch.message_count": len(items)},
                    ):
                        await reg.handler(event, Delivery(raw))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - retried message by message below
            log.debug("batch unit of work failed; handling the batch message by message",
                      exc_info=True)
            return False
        for raw, _, _ in items:
            await raw.ack()
        return True

    async def cancel_detached(self) -> None:
        """Stop long handlers unacknowledged: JetStream redelivers their messages later."""
        tasks = list(self._detached)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_group(self, items: list[tuple[Any, Registration, Any]]) -> None:
        for raw, reg, event in items:
            await self._run_one(raw, reg, event)

    async def _run_one(self, raw: Any, reg: Registration, event: Any) -> None:
        ctx = propagate.extract(dict(raw.headers or {}))
        with self._tracer.start_as_current_span(
            f"{raw.subject} process", context=ctx, kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.destination.name": raw.subject,
                        "messaging.consumer.group.name": reg.durable,
                        "messaging.message.id": str(event.event_id)},
        ):
            try:
                await reg.handler(event, Delivery(raw))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is accounted for
                await self._fail(raw, exc, permanent=isinstance(exc, PermanentError))
                return
        await raw.ack()

    async def _fail(self, raw: Any, exc: BaseException, *, permanent: bool) -> None:
        meta = raw.metadata
        delivered = int(meta.num_delivered)
        if permanent or delivered >= self.max_deliver:
            await dead_letter(raw, meta, exc, delivered)
            await raw.term()
            return
        delay = backoff_for(delivered, self.schedule)
        log.warning(
            "handler failed, redelivering",
            extra={"subject": raw.subject, "consumer": meta.consumer, "delivery": delivered,
                   "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"},
        )
        await raw.nak(delay=delay)


async def dead_letter(raw: Any, meta: Any, exc: BaseException, delivered: int) -> None:
    headers = dict(raw.headers or {})
    event = DeadLettered(
        stream=meta.stream,
        consumer=meta.consumer,
        original_subject=raw.subject,
        original_event_id=headers.get("Nats-Msg-Id"),
        deliveries=delivered,
        error_type=type(exc).__name__,
        error="".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000],
        payload=raw.data.decode("utf-8", "replace"),
        headers={k: v for k, v in headers.items() if not k.lower().startswith("authorization")},
    )
    subject = f"deadletter.{meta.stream}.{meta.consumer}"
    js = raw._client.jetstream()  # the connection the message came on
    await js.publish(
        subject,
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": f"dl-{meta.stream}-{meta.sequence.stream}"},
        timeout=10.0,
    )
    log.error(
        "message dead-lettered",
        extra={"subject": raw.subject, "consumer": meta.consumer, "deliveries": delivered,
               "error": event.error},
    )


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

        broker = NatsBroker(
            # a comma-separated URL lists the cluster's seed servers
            [u.strip() for u in settings.require_nats().split(",") if u.strip()],
            middlewares=[NatsTelemetryMiddleware()],
            graceful_timeout=15.0,
            # per-message "Received/Processed" lines cost more than a handler at thousands
            # of events per second; they are kept at DEBUG, errors are logged by us
            log_level=logging.DEBUG,
            **broker_kwargs,
        )
        dispatcher = Dispatcher(settings)
        events = NatsRouter(middlewares=[dispatcher.middleware()])
        commands = NatsRouter()
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
        database and events it emits: a fetched batch is then handled in a few transactions
        (``BATCH_TRANSACTIONS``), several batches at once (``PIPELINED_BATCHES``, entity
        order kept)
        (``db.consume``/``db.transaction``/``tx.emit`` inside the handler join it; the
        outbox rows are written together at the end), which saves a commit and several
        round trips per event.  If any handler of the batch raises, the transaction is
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
        return self.commands.subscriber(subj, queue=f"{self.service}-cmd",
                                        title=f"{self.service}:{subj}", max_workers=max_workers)

    def include(self) -> None:
        self.broker.include_router(self.events)
        self.broker.include_router(self.commands)

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.connect()
        await ensure_streams(self.js, self.settings.stream_replicas)
        await self.broker.start()

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


def error_reply(reply_type: type[R], code: str, message: str, hint: str | None = None,
                field_name: str | None = None, **details: Any) -> R:
    from .events.envelope import ErrorInfo

    return reply_type(ok=False, error=ErrorInfo(code=code, message=message, hint=hint,
                                                field=field_name, details=details))


__all__ = [
    "STREAMS", "Bus", "Delivery", "PermanentError", "Reply", "StreamSpec", "backoff_for", "ensure_streams",
    "error_reply", "event_headers", "reveal_secrets_json", "stream_for_subject",
]
