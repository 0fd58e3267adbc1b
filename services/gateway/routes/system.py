"""Operations endpoints: liveness of every service, the AsyncAPI document, metrics."""
from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import handlers
from ..asyncapi import build_asyncapi, channel_rows
from ..auth import user_from_bearer
from ..deps import GatewayDep
from ..domain.errors import ApiError
from ..models import HealthReport

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthReport,
            responses={503: {"model": HealthReport, "description": "a service is down"}})
async def healthz(gw: GatewayDep) -> JSONResponse:
    """Each service's liveness as seen over NATS (a ping on ``system.cmd.ping.<name>``)."""
    report = await handlers.service_liveness(gw)
    return JSONResponse(report.model_dump(mode="json"),
                        status_code=200 if report.status == "ok" else 503)


def asyncapi_document(gw: Any) -> dict[str, Any]:
    if gw.asyncapi is None:
        gw.asyncapi = build_asyncapi(gw.settings)
    return gw.asyncapi  # type: ignore[no-any-return]


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi_json(gw: GatewayDep) -> JSONResponse:
    return JSONResponse(asyncapi_document(gw))


@router.get("/asyncapi", response_class=HTMLResponse, include_in_schema=False)
async def asyncapi_page(gw: GatewayDep, request: Request) -> HTMLResponse:
    document = asyncapi_document(gw)
    return gw.templates.TemplateResponse(request, "asyncapi.html", {
        "rows": channel_rows(document), "document": document, "user": None,
        "missing": document.get("x-labfleet-missing", {})})


def listens_on_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: GatewayDep,
                  authorization: Annotated[str | None, Header()] = None) -> Response:
    """Open when only this machine can reach the gateway or LABFLEET_METRICS_PUBLIC is
    set; otherwise it needs an API token (request counts, routes and failures tell an
    outsider more about the lab than it should)."""
    settings = gw.settings
    if not (settings.metrics_public or listens_on_loopback(settings.http_host)):
        if not authorization:
            raise ApiError(403, "metrics_not_public",
                           f"/metrics is not public: the gateway listens on "
                           f"{settings.http_host}, beyond this machine",
                           hint="send `Authorization: Bearer <token>` (in Prometheus: "
                                "`authorization: {credentials: <token>}`), or set "
                                "LABFLEET_METRICS_PUBLIC=true")
        await user_from_bearer(gw.accounts, authorization)
    gw.metrics.sse_clients.set(len(gw.hub.clients))
    gw.metrics.cached_samples.set(len(gw.hub.samples))
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
