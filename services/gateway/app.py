"""The FastAPI application: routers, error bodies, sessions, static files, metrics."""
from __future__ import annotations

import re
import time

import asyncpg
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from labfleet.shared.commands import data_error_reply, invalid_request
from labfleet.shared.events.envelope import Reply
from labfleet.shared.service import VERSION
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import SESSION_COOKIE, SESSION_TTL, dummy_password_hash
from .context import Gateway
from .csrf import CsrfRefused, verify_csrf
from .deps import LoginRequired
from .domain.errors import ApiError
from .routes import (
    api_alerts,
    api_artifacts,
    api_build_servers,
    api_builds,
    api_docs,
    api_environments,
    api_qemu_hosts,
    api_resources,
    api_tokens,
    pages_alerts,
    pages_auth,
    pages_builds,
    pages_environments,
    pages_host_keys,
    pages_qemu_hosts,
    pages_servers,
    system,
)
from .routes.responses import API_RESPONSES
from .security_headers import SecurityHeadersMiddleware

HERE = Path(__file__).parent
STATIC = HERE / "static"
API_PREFIX = "/api/v1"
#: the routers under API_PREFIX, and those at the root (pages, operations)
API_ROUTES = (api_build_servers, api_builds, api_artifacts, api_environments, api_tokens,
              api_alerts, api_qemu_hosts, api_resources)
ROOT_ROUTES = (system, api_docs, pages_auth, pages_servers, pages_builds, pages_environments,
               pages_alerts, pages_qemu_hosts, pages_host_keys)


class MetricsMiddleware:
    """Counts and times requests by route template (``/builds/{build_id}``), not raw path,
    so thousands of ids do not become thousands of series."""

    def __init__(self, app: ASGIApp, gateway: Gateway, templates: dict[Any, str]) -> None:
        self.app = app
        self.metrics = gateway.metrics
        #: endpoint function → full path template (routers keep only their own part)
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = self.templates.get(scope.get("endpoint"), "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def _error(status: int, code: str, message: str, hint: str | None = None,
           field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message, hint, field, **extra).body(),
                        status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _wants_html(request: Request) -> bool:
    return (not request.url.path.startswith("/api/")
            and "text/html" in request.headers.get("accept", ""))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        gw: Gateway = request.app.state.gateway
        if exc.status >= 500:
            gw.metrics.commands.labels(str(exc.details.get("service", "")), exc.code).inc()
        return _error(exc.status, exc.code, exc.message, exc.hint, exc.field, **exc.details)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: CsrfRefused) -> Any:
        if _wants_html(request):
            gw: Gateway = request.app.state.gateway
            return gw.templates.TemplateResponse(
                request, "error.html", {"user": None, "status": 403, "message": exc.message,
                                        "hint": exc.hint}, status_code=403)
        return _error(403, "csrf_refused", exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        what = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"{field}: {what}" if field else what
        details = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]),
                    "message": str(e.get("msg")).removeprefix("Value error, ")}
                   for e in problems]
        return _error(422, "validation_failed", message,
                      "correct the named field and send again", field, problems=details)

    @app.exception_handler(ValidationError)
    async def invalid_inside(request: Request, exc: ValidationError) -> JSONResponse:
        # a request that passed its own model but not a message built from it
        reply = invalid_request(Reply, exc)
        error = reply.error
        assert error is not None
        return _error(422, "validation_failed", error.message, error.hint, error.field,
                      problems=error.details.get("errors", []))

    @app.exception_handler(asyncpg.DataError)
    async def invalid_for_the_database(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        reply = data_error_reply(exc)
        assert reply is not None and reply.error is not None
        return _error(422, reply.error.code, reply.error.message, reply.error.hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 404 and _wants_html(request):
            gw: Gateway = request.app.state.gateway
            return gw.templates.TemplateResponse(
                request, "error.html", {"user": None, "status": 404,
                                        "message": "There is no page at this address."},
                status_code=404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path takes (Starlette names only the first route that
    matched the path).  Where a literal path and a templated one both match
    (``/build-servers/maintenance`` and ``/build-servers/{server_id}``), the path is the
    one with the fewest parameters, as the OpenAPI document describes it."""
    path = request.url.path
    matches = [(template.count("{"), methods)
               for regex, methods, template in request.app.state.route_methods
               if regex.match(path)]
    if not matches:
        return []
    fewest = min(n for n, _ in matches)
    return sorted({m for n, methods in matches if n == fewest for m in methods})


def _templates(router: APIRouter, prefix: str) -> dict[Any, str]:
    return {route.endpoint: prefix + route.path for route in router.routes
            if isinstance(route, APIRoute)}


def _methods(router: APIRouter, prefix: str
             ) -> list[tuple[re.Pattern[str], set[str], str]]:
    """(path regex, methods, path template) of each route, for the ``Allow`` of a 405."""
    return [(compile_path(prefix + route.path)[0], set(route.methods or ()),
             prefix + route.path)
            for route in router.routes if isinstance(route, APIRoute)]


def create_app(gateway: Gateway, session_secret: str) -> FastAPI:
    # /docs is served by routes.api_docs from local files; FastAPI's own pages use a CDN
    app = FastAPI(title="labfleet gateway", version=VERSION, docs_url=None, redoc_url=None,
                  dependencies=[Depends(verify_csrf)],
                  description="REST API of labfleet: build servers, builds and artifacts. "
                              "Every /api/v1 call needs `Authorization: Bearer <token>`.")
    app.state.gateway = gateway
    dummy_password_hash()  # made now, so the first log-in of an unknown name is not slower
    api = APIRouter(prefix=API_PREFIX, responses=API_RESPONSES)
    route_templates: dict[Any, str] = {}
    app.state.route_methods = []
    for module in API_ROUTES:
        api.include_router(module.router)
        route_templates.update(_templates(module.router, API_PREFIX))
        app.state.route_methods += _methods(module.router, API_PREFIX)
    app.include_router(api)
    for module in ROOT_ROUTES:
        app.include_router(module.router)
        route_templates.update(_templates(module.router, ""))
        app.state.route_methods += _methods(module.router, "")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_error_handlers(app)
    app.add_middleware(SessionMiddleware, secret_key=session_secret,
                       session_cookie=SESSION_COOKIE, max_age=int(SESSION_TTL.total_seconds()),
                       same_site="lax", https_only=gateway.settings.https)
    # outermost but for the metrics: error pages and static files get the headers too
    app.add_middleware(SecurityHeadersMiddleware, session_cookie=SESSION_COOKIE)
    app.add_middleware(MetricsMiddleware, gateway=gateway, templates=route_templates)
    return app
