"""``/docs``: the interactive API page, Swagger UI served from the gateway's own static
folder (fetched from npm by ``infra/setup.sh`` and the image build), so the page loads
nothing from another site and runs under the Content-Security-Policy.  ReDoc, which
FastAPI would load from a CDN, is not offered."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..deps import GatewayDep
from ..templating import VENDOR

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def api_docs(request: Request, gw: GatewayDep) -> HTMLResponse:
    installed = all((VENDOR / name).exists()
                    for name in ("swagger-ui-bundle.js", "swagger-ui.css"))
    return gw.templates.TemplateResponse(request, "api_docs.html", {
        "swagger_installed": installed, "openapi_url": request.app.openapi_url})
