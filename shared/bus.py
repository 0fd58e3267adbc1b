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
from opentelemetry import propagate
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


class PermanentError(Exception):
    """Raise from a handler when retrying can never help: straight to the dead letters."""


def make_redelivery_middleware(settings: Settings) -> type[BaseMiddleware]:
    max_deliver = settings.max_deliver
    schedule = list(settings.redelivery_backoff_s)

    class RedeliveryMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Callable[..., Awaitable[Any]], msg: Any) -> Any:
            raw = msg.raw_message
            meta = None
            try:
                meta = raw.metadata
            except Exception:  # core NATS message (a command): not ours to ack
                return await call_next(msg)
            try:
                result = await call_next(msg)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure is accounted for
                permanent = isinstance(exc, (PermanentError, ValidationError))
                delivered = meta.num_delivered
                if permanent or delivered >= max_deliver:
                    await dead_letter(raw, meta, exc, delivered)
                    await raw.term()
                else:
                    delay = backoff_for(delivered, schedule)
                    log.warning(
                        "handler failed, redelivering",
                        extra={
                            "subject": raw.subject,
                            "consumer": meta.consumer,
                            "delivery": delivered,
                            "retry_in_s": delay,
                            "error": f"{type(exc).__name__}: {exc}",
                        },
                    )
                    await raw.nak(delay=delay)
                return None
            if not getattr(msg, "committed", None):
                await raw.ack()
            return result

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
        )
        log.error(
            "message dead-lettered",
            extra={"subject": raw.subject, "consumer": meta.consumer, "deliveries": delivered,
                   "error": event.error},
        )

    return RedeliveryMiddleware


@dataclass
class Bus:
    """The one object a service uses to talk to the others."""

    settings: Settings
    service: str
    broker: NatsBroker
    events: NatsRouter
    commands: NatsRouter
    _js: Any = field(default=None, init=False)

    @classmethod
    def create(cls, settings: Settings, service: str, **broker_kwargs: Any) -> Bus:
        from faststream.nats.opentelemetry import NatsTelemetryMiddleware

        broker = NatsBroker(
            settings.require_nats(),
            middlewares=[NatsTelemetryMiddleware()],
            graceful_timeout=15.0,
            **broker_kwargs,
        )
        events = NatsRouter(middlewares=[make_redelivery_middleware(settings)])
        commands = NatsRouter()
        return cls(settings=settings, service=service, broker=broker, events=events,
                   commands=commands)

    # ---- wiring -------------------------------------------------------------------

    def on_event(
        self,
        event_type: type[Event],
        *,
        purpose: str,
        subject: str | None = None,
        batch_size: int = 16,
        max_workers: int | None = None,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """Register a durable consumer ``<service>-<purpose>`` for ``event_type``.

        The handler is an ``async def handler(event: EventType, msg: NatsMessage)``; it
        must be idempotent (see ``Database.consume``).
        """
        subj = subject or event_type.subject
        spec = stream_for_subject(subj)
        durable = f"{self.service}-{purpose}"
        config = ConsumerConfig(
            durable_name=durable,
            max_deliver=self.settings.max_deliver + 1,  # our middleware terms before this
            ack_wait=self.settings.ack_wait_s,
            deliver_policy=deliver_policy,
            max_ack_pending=max(1000, (max_workers or 1) * batch_size * 4),
        )
        return self.events.subscriber(
            subj,
            stream=JStream(spec.name, declare=False),
            durable=durable,
            config=config,
            pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
            max_workers=max_workers or self.settings.consumer_concurrency,
            title=f"{durable}:{subj}",
        )

    def on_command(self, command_type: type[Command], subject: str | None = None
                   ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """A request/reply handler; replicas share commands through a queue group."""
        subj = subject or command_type.subject
        return self.commands.subscriber(subj, queue=f"{self.service}-cmd",
                                        title=f"{self.service}:{subj}")

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
    "STREAMS", "Bus", "PermanentError", "Reply", "StreamSpec", "backoff_for", "ensure_streams",
    "error_reply", "event_headers", "reveal_secrets_json", "stream_for_subject",
]
