"""Errors the gateway answers with, and which HTTP status a service's error code gets.

Every error body is ``{"error": {"code", "message", "hint", "field"}}`` so a client (and
the pages' forms) can show what failed next to the field it is about.
"""
from __future__ import annotations

from typing import Any

from labfleet.shared.events.envelope import ErrorInfo

#: codes that mean the service behind the gateway failed, not the request
UPSTREAM_FAILURE_CODES = {"internal_error", "reply_too_large"}

#: codes that mean "this does not exist"
NOT_FOUND_CODES = {"not_found", "unknown_build", "unknown_resource", "unknown_artifact"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, hint: str | None = None,
                 field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.field = field
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "hint": self.hint, "field": self.field}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> ApiError:
        return cls(status_for_code(info.code), info.code, info.message, info.hint, info.field,
                   **info.details)


#: refusals because of work in progress (decommissioning a busy server)
BUSY_CODES = frozenset({"active_builds", "active_builds_unknown"})


def status_for_code(code: str) -> int:
    """409 for duplicates, 404 for unknown things, 502 where the service behind failed
    (its handler raised, or its answer was too large for the bus), 422 for every other
    refusal."""
    if code in UPSTREAM_FAILURE_CODES:
        return 502
    if code.startswith("duplicate") or code.endswith("_conflict") or code in BUSY_CODES:
        return 409
    if code in NOT_FOUND_CODES or code.endswith("_not_found"):
        return 404
    return 422


def unauthorized(message: str, hint: str | None = None) -> ApiError:
    return ApiError(401, "unauthorized", message, hint)


def service_unavailable(service: str, subject: str) -> ApiError:
    return ApiError(
        503, "service_unavailable",
        f"the {service} service is not running: nobody answered {subject}",
        hint=f"start it (`labfleet run {service}`, or `labfleet up` for the whole set) "
             "and retry",
        service=service,
    )


def service_timeout(service: str, subject: str, timeout: float) -> ApiError:
    return ApiError(
        504, "service_timeout",
        f"the {service} service did not answer {subject} within {timeout:g} s",
        hint=f"check the {service} service's logs; it may be overloaded or stuck",
        service=service,
    )
