"""How a fetched batch is handled: validation, ordering, acknowledgement, dead letters.

``Bus.on_event`` registers a handler here; faststream's batch pull consumer hands each
fetched batch to :class:`Dispatcher` through its middleware.  Split from ``bus`` so that
the wiring (streams, publishing, requests) and the per-message policy each have a room.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream import BaseMiddleware
from opentelemetry import propagate, trace
from pydantic import ValidationError

from .events.envelope import Event
from .events.system import DeadLettered
from .settings import Settings

log = logging.getLogger("labfleet.shared.bus")


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


def hand_over_partial_batches() -> None:
    """Make faststream's batch pull consumer hand over what one fetch returned.

    faststream (0.7) fetches again and again until the batch is full or its time-out
    (0.5 s) has passed, so a lone event waited for the rest of that half second before
    its handler ran (measured: ~130 ms on average for an event every 0.37 s, against
    ~2 ms for one nats-py fetch, which already returns as soon as it has messages and
    nothing more is waiting).  Under load a fetch returns full batches anyway.  Idempotent.
    """
    import nats.errors
    from faststream.nats.subscriber.usecases.stream_pull_subscriber import (
        BatchPullStreamSubscriber,
    )
    from nats.js.errors import ServiceUnavailableError

    if getattr(BatchPullStreamSubscriber._consume_pull, "_labfleet_partial", False):
        return

    async def _consume_pull(self: Any) -> None:
        assert self.subscription, "the subscription is created before its consume task"
        batch_size = self.pull_sub.batch_size
        timeout = self.pull_sub.timeout
        while self.running:
            try:
                messages = await self.subscription.fetch(batch=batch_size, timeout=timeout)
            except TimeoutError:  # nothing came (nats.errors.TimeoutError is one)
                continue
            except (nats.errors.ConnectionClosedError, ServiceUnavailableError):
                # unacknowledged messages come back from the server; do not spin meanwhile
                await asyncio.sleep(0.1)
                continue
            if messages and self.running:
                await self.consume(messages)

    _consume_pull._labfleet_partial = True  # type: ignore[attr-defined]
    BatchPullStreamSubscriber._consume_pull = _consume_pull  # type: ignore[method-assign]


class PermanentError(Exception):
    """Raise from a handler when retrying can never help: straight to the dead letters."""


#: fields whose value orders the events of one entity; events of one entity in a batch are
#: handled one after another, different entities concurrently
ORDERING_FIELDS = ("build_id", "resource_id", "request_id", "env_id", "pipeline_id")


@functools.cache
def _ordering_field(event_type: type[Event]) -> str | None:
    return next((f for f in ORDERING_FIELDS if f in event_type.model_fields), None)


def ordering_key(event: Event) -> str:
    """The entity an event is about (its first ``ORDERING_FIELDS`` field), else itself.

    The field is looked up once per event type: asking each event with ``hasattr`` made
    pydantic raise and catch an AttributeError per missing field, 6 % of a busy
    consumer's CPU (measured with py-spy under bench/bus.py).
    """
    field = _ordering_field(type(event))
    return str(getattr(event, field) if field else event.event_id)


#: how many transactions a fetched batch is split into when handled with ``batch_db``.
#: One: a batch's idempotency records, deferred writes and outbox rows each go in one
#: statement, so a transaction costs about the same for 1 event as for 128 (measured with
#: bench/bus.py: 4 transactions per batch handled 1,780/s at 2,000/s offered, 1 handled
#: 1,990/s with the median latency down from 0.9 s to 53 ms)
BATCH_TRANSACTIONS = 1
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
            groups.setdefault(ordering_key(event), []).append((raw, reg, event))
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
            async with db.batch([event.event_id for _, _, event in items]):
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
