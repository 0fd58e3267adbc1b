"""The error statuses an ``/api/v1`` operation may answer, declared in the OpenAPI
document once and reused by every route (``APIRouter(responses=API_RESPONSES)``): each
has the gateway's error body, ``{"error": {"code", "message", "hint", "field"}}``."""
from __future__ import annotations

from typing import Any

from ..models import ErrorBody


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: status → what it means on this API (see domain.errors.status_for_code for the mapping
#: of a service's refusal codes)
API_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the request is not well-formed (e.g. a body that is not JSON)"),
    401: _error("no valid bearer token"),
    403: _error("the token's user may not do this, or a page's request failed its "
                "CSRF check"),
    404: _error("no such resource, build, artifact or path"),
    409: _error("a duplicate, or refused because of work in progress"),
    422: _error("a field is invalid, or a service refused the request; "
                "`error.field` names the field"),
    502: _error("the service behind the gateway failed"),
    503: _error("the service behind the gateway is not running"),
    504: _error("the service behind the gateway did not answer in time"),
}
