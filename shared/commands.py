"""How a command is answered: every request that reaches a service gets a reply, never a
timeout.

``Bus.on_command`` wraps each handler with :func:`always_answered`, and the commands
router runs :class:`CommandMiddleware`:

* a body that does not validate as the handler's command → ``invalid_request`` naming
  each bad field (the handler does not run);
* a handler that raises :class:`DataError`, or whose database refuses the command's data
  (PostgreSQL's class 22, "data exception") → ``invalid_data`` naming the field, which
  the gateway answers with 422;
* a handler that raises anything else → ``internal_error`` (the trace goes to the log);
* a reply over the server's ``max_payload`` → ``reply_too_large`` with both sizes (the
  client would refuse to send it).

Split from ``bus`` as ``dispatch`` is for events: the wiring and the per-message policy
each have a room.
"""
from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream import BaseMiddleware
from pydantic import BaseModel, ValidationError

from .events.envelope import ErrorInfo, Reply

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

#: room left in a reply for its headers (tracing, the server's own): max_payload counts them
REPLY_HEADROOM = 4096


def error_reply(reply_type: type[R], code: str, message: str, hint: str | None = None,
                field_name: str | None = None, **details: Any) -> R:
    return reply_type(ok=False, error=ErrorInfo(code=code, message=message, hint=hint,
                                                field=field_name, details=details))


def invalid_request(reply_type: type[R], exc: ValidationError, *, skip: int = 0) -> R:
    """The refusal of a command that does not validate, naming the first bad field and
    listing every one; ``skip`` leading parts of each error's location are not fields
    (the handler's parameter name, where the framework validated the command)."""
    errors = [(".".join(str(p) for p in e.get("loc", ())[skip:]),
               str(e.get("msg", "")).removeprefix("Value error, "))
              for e in exc.errors()]
    where, what = errors[0] if errors else ("", "invalid value")
    return error_reply(reply_type, "invalid_request",
                       f"{where + ': ' if where else ''}{what or 'invalid value'}",
                       hint="correct the field and send again", field_name=where or None,
                       errors=[{"field": f, "message": m} for f, m in errors])


class DataError(Exception):
    """The command's data cannot be used (a value the service cannot store or act on):
    answered ``invalid_data`` with the field, never ``internal_error``."""

    def __init__(self, message: str, field: str | None = None,
                 hint: str = "correct the field and send again") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint


def data_error_reply(exc: BaseException) -> Reply | None:
    """The ``invalid_data`` answer for ``exc`` when it is about the command's data."""
    if isinstance(exc, DataError):
        return error_reply(Reply, "invalid_data", exc.message, hint=exc.hint,
                           field_name=exc.field)
    import asyncpg

    if isinstance(exc, asyncpg.DataError):
        return error_reply(Reply, "invalid_data",
                           f"the database refused a value of the request: {exc}",
                           hint="send plain text without NUL or control characters, and "
                                "values within their documented range")
    return None


def always_answered(fn: Callable[..., Awaitable[Any]], subject: str, service: str,
                    max_payload: Callable[[], int]) -> Callable[..., Awaitable[Any]]:
    """``fn`` answering ``internal_error`` when it raises and ``reply_too_large`` when its
    reply will not fit, each in the shape ``fn`` declares (FastStream casts the result to
    its return annotation)."""
    shape = _reply_shape(fn)

    @functools.wraps(fn)
    async def answer(*args: Any, **kwargs: Any) -> Any:
        try:
            return _shaped(fit_reply(subject, await fn(*args, **kwargs), max_payload()), shape)
        except Exception as exc:  # noqa: BLE001 - the caller is owed an answer
            refusal = data_error_reply(exc)
            if refusal is not None:
                log.warning("command refused: %s", refusal.error.message if refusal.error
                            else "", extra={"subject": subject})
                return _shaped(refusal, shape)
            log.exception("command failed", extra={"subject": subject})
            return _shaped(error_reply(
                Reply, "internal_error", f"the {service} service failed while handling "
                f"{subject}", hint=f"see the {service} service's log; retrying may help"),
                shape)

    return answer


def fit_reply(subject: str, reply: Any, max_payload: int) -> Any:
    """``reply`` if the NATS server will carry it, else an error reply that says so."""
    limit = max_payload - REPLY_HEADROOM
    if isinstance(reply, str):
        # UTF-8 takes at most 4 bytes a character: most replies need no encoding to tell
        size = len(reply) if len(reply) * 4 <= limit else len(reply.encode())
    elif isinstance(reply, BaseModel):
        size = len(reply.model_dump_json().encode())
    elif isinstance(reply, bytes | bytearray):
        size = len(reply)
    else:
        return reply
    if size <= limit:
        return reply
    log.error("the answer to %s is %d bytes, over what this NATS server carries (%d)",
              subject, size, max_payload)
    return error_reply(
        Reply, "reply_too_large",
        f"the answer to {subject} is {size} bytes, more than the NATS server's "
        f"max_payload of {max_payload} bytes allows",
        hint="raise max_payload in the NATS server's configuration (labfleet's own "
             "servers allow 8MB), or ask for less (a filter, a smaller page)",
        size=size, max_payload=max_payload)


def _reply_shape(fn: Callable[..., Any]) -> Any:
    """What a command handler says it returns (FastStream casts the result to it)."""
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: left as it is
        return None


def _shaped(reply: Any, shape: Any) -> Any:
    """A reply in the shape the handler says it returns (a plain :class:`Reply` the bus
    made, a JSON string), so that FastStream's cast of the result accepts it; a result
    that cannot take that shape raises here, in the handler's own wrapper."""
    if isinstance(shape, type) and issubclass(shape, Reply):
        if isinstance(reply, str | bytes | bytearray):
            return shape.model_validate_json(reply)  # a handler that serialised it itself
        if isinstance(reply, Reply) and not isinstance(reply, shape):
            return shape(ok=reply.ok, error=reply.error)
        return reply
    if not isinstance(reply, Reply):
        return reply
    if shape is str:
        return reply.model_dump_json()
    # an annotation that did not resolve here (a name local to where the handler was
    # defined): a mapping is what a cast to any reply model accepts
    return reply.model_dump(mode="json") if shape is None and type(reply) is Reply else reply


class CommandMiddleware(BaseMiddleware):
    """A command whose body does not validate as its handler's parameter gets a refusal
    naming the fields (the handler never runs).  (A handler that raises is answered by
    :func:`always_answered`.)"""

    async def consume_scope(self, call_next: Callable[..., Awaitable[Any]], msg: Any) -> Any:
        try:
            return await call_next(msg)
        except ValidationError as exc:
            # validated as the handler's one parameter: its name leads each location
            reply = invalid_request(Reply, exc, skip=1)
            raw = msg.raw_message
            log.warning("command refused: %s", reply.error.message if reply.error else "",
                        extra={"subject": raw.subject})
            if raw.reply:
                await raw.respond(reply.model_dump_json().encode())
            return None
