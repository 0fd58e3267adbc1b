"""Operations endpoints: liveness of every service, the AsyncAPI document, metrics."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import handlers
from ..asyncapi import build_asyncapi, channel_rows
from ..deps import GatewayDep
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


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: GatewayDep) -> Response:
    gw.metrics.sse_clients.set(len(gw.hub.clients))
    gw.metrics.cached_samples.set(len(gw.hub.samples))
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
