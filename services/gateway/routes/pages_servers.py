"""Pages: the overview, the build-server dashboard with its live rows, a server's detail."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from labfleet.shared.events.resource import Arch
from sse_starlette import EventSourceResponse

from .. import fleet, handlers
from ..adapters.live import server_key
from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError
from ..domain.presentation import history_plot, usage
from ..models import BuildServerCreate, BuildServerPublic, MaintenanceSet
from .forms import empty_form, form_labels, form_secret, split_list, submit_registration

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
STATUSES = ("online", "degraded", "offline", "maintenance", "unknown")


def render_row(gw: Gateway, server: BuildServerPublic) -> str:
    return gw.templates.get_template("_server_row.html").render(s=server, u=usage(server.sample))


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    liveness = await handlers.service_liveness(gw)
    counts: dict[str, int] = {}
    servers_error = None
    try:
        page = await handlers.build_server_page(gw, size=1)
        total = page.total
        for view in (await gw.hub.resources(lambda: handlers.load_build_servers(gw))).values():
            h = gw.hub.health.get(view.resource_id)
            key = h.status.value if h else "unknown"
            counts[key] = counts.get(key, 0) + 1
    except ApiError as exc:
        total, servers_error = 0, exc.message
    builds, builds_error = [], None
    try:
        builds = await handlers.list_builds(gw, limit=10)
    except ApiError as exc:
        builds_error = exc.message
    return gw.templates.TemplateResponse(request, "overview.html", {
        "user": user, "liveness": liveness, "total": total, "counts": counts,
        "servers_error": servers_error, "builds": builds, "builds_error": builds_error})


@router.get("/build-servers", response_class=HTMLResponse)
async def dashboard(request: Request, gw: GatewayDep, user: PageUser,
                    q: str | None = None, status: str | None = None,
                    page: Annotated[int, Query(ge=1)] = 1) -> Response:
    return await _dashboard(request, gw, user, q=q, status=status, page=page)


async def _dashboard(request: Request, gw: Gateway, user: Any, *, q: str | None = None,
                     status: str | None = None, page: int = 1,
                     form: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    error = None
    try:
        window = await handlers.build_server_page(gw, query=q, status=status or None,
                                                  page=page, size=PAGE_SIZE)
    except ApiError as exc:
        window, error = None, exc
    rows = [render_row(gw, s) for s in window.items] if window else []
    return gw.templates.TemplateResponse(request, "build_servers.html", {
        "user": user, "page": window, "rows": rows, "error": error, "q": q or "",
        "status": status or "", "statuses": STATUSES, "form": form or empty_form(),
        "archs": list(Arch),
        "ids": ",".join(str(s.id) for s in window.items) if window else ""},
        status_code=status_code)


@router.get("/build-servers/stream")
async def dashboard_stream(request: Request, gw: GatewayDep, _: PageUser,
                           ids: str = "") -> EventSourceResponse:
    """Rows of the servers this page shows, re-rendered when their data changes."""
    wanted = []
    for text in ids.split(",")[:500]:
        try:
            wanted.append(uuid.UUID(text))
        except ValueError:
            continue
    client = gw.hub.connect(server_key(i) for i in wanted)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while not gw.hub.closing.is_set():
                try:
                    keys = await asyncio.wait_for(client.queue.get(), timeout=5.0)
                except TimeoutError:
                    continue
                views = await gw.hub.resources(lambda: handlers.load_build_servers(gw))
                for key in sorted(keys):
                    resource_id = uuid.UUID(key.split(":", 1)[1])
                    view = views.get(resource_id)
                    if view is None:
                        continue
                    server = await handlers.build_server_public(gw, view)
                    gw.metrics.live_updates.inc()
                    yield {"event": f"row-{resource_id}", "data": render_row(gw, server)}
        finally:
            gw.hub.disconnect(client)

    return EventSourceResponse(events(), ping=15, headers={"X-Accel-Buffering": "no"})


# ---- registration form ----------------------------------------------------------------


def form_to_model(values: dict[str, Any]) -> BuildServerCreate:
    return BuildServerCreate(
        hostname=values.get("hostname", "").strip(), address=values.get("address", "").strip(),
        ssh_port=values.get("ssh_port") or 22, username=values.get("username", "").strip(),
        **form_secret(values),
        architectures=values.get("architectures", []),
        build_configs=split_list(values.get("build_configs", "")), labels=form_labels(values),
        expected_host_key_fingerprint=values.get("expected_host_key_fingerprint") or None,
        work_dir=values.get("work_dir") or None)


@router.post("/build-servers", response_class=HTMLResponse)
async def register(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    raw = await request.form()
    values: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(v, str)}
    values["architectures"] = [a for a in raw.getlist("architectures") if isinstance(a, str)]
    form = await submit_registration(
        lambda: handlers.register_build_server(gw, form_to_model(values), user), values,
        FORM_FIELDS)
    if request.headers.get("HX-Request"):
        return gw.templates.TemplateResponse(request, "_register_form.html", {
            # htmx swaps only 2xx answers: the form with its messages comes back as 200
            "form": form, "archs": list(Arch)})
    return await _dashboard(request, gw, user, form=form,
                            status_code=422 if form["errors"] else 200)


FORM_FIELDS = {"hostname", "address", "ssh_port", "username", "password", "private_key",
               "architectures", "build_configs", "labels", "expected_host_key_fingerprint",
               "work_dir"}


# ---- one server -----------------------------------------------------------------------


@router.get("/build-servers/{server_id}", response_class=HTMLResponse)
async def detail(request: Request, server_id: uuid.UUID, gw: GatewayDep, user: PageUser
                 ) -> Response:
    return await _detail(request, gw, user, server_id)


async def _detail(request: Request, gw: Gateway, user: Any, server_id: uuid.UUID,
                  action_error: ApiError | None = None) -> Response:
    try:
        server = await fleet.server_detail(gw, server_id)
    except ApiError as exc:
        return _error_page(request, gw, user, exc)
    return gw.templates.TemplateResponse(request, "build_server.html", {
        "user": user, "s": server, "u": usage(server.sample), "row": render_row(gw, server),
        "plot": history_plot(server.history), "action_error": action_error},
        status_code=action_error.status if action_error else 200)


def _error_page(request: Request, gw: Gateway, user: Any, exc: ApiError) -> Response:
    return gw.templates.TemplateResponse(request, "error.html", {
        "user": user, "status": exc.status, "message": exc.message, "hint": exc.hint},
        status_code=exc.status)


def _when(text: str | None) -> datetime | None:
    """A ``datetime-local`` field (the browser's local time is taken as UTC)."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.post("/build-servers/{server_id}/maintenance")
async def maintenance(request: Request, server_id: uuid.UUID, gw: GatewayDep,
                      user: PageUser) -> Response:
    form = await request.form()
    try:
        body = MaintenanceSet(on=form.get("on") == "1", reason=str(form.get("reason") or ""),
                              start=_when(str(form.get("start") or "")),
                              end=_when(str(form.get("end") or "")))
        await fleet.set_maintenance(gw, server_id, body, user)
    except ValueError as exc:
        return await _detail(request, gw, user, server_id, ApiError(
            422, "invalid_request", f"the window is not valid: {exc}", field="start"))
    except ApiError as exc:
        return await _detail(request, gw, user, server_id, exc)
    return RedirectResponse(f"/build-servers/{server_id}", status_code=303)


@router.post("/build-servers/{server_id}/options")
async def options(request: Request, server_id: uuid.UUID, gw: GatewayDep,
                  user: PageUser) -> Response:
    form = await request.form()
    try:
        await fleet.set_options(gw, server_id, form.get("pause_on_low_disk") == "1", user)
    except ApiError as exc:
        return await _detail(request, gw, user, server_id, exc)
    return RedirectResponse(f"/build-servers/{server_id}", status_code=303)


@router.post("/build-servers/{server_id}/remove")
async def remove(request: Request, server_id: uuid.UUID, gw: GatewayDep,
                 user: PageUser) -> Response:
    form = await request.form()
    try:
        await fleet.decommission(gw, server_id, form.get("force") == "1", user)
    except ApiError as exc:
        return await _detail(request, gw, user, server_id, exc)
    return RedirectResponse("/build-servers", status_code=303)


@router.get("/maintenance", response_class=HTMLResponse)
async def maintenance_page(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    try:
        overview = await fleet.maintenance_overview(gw)
    except ApiError as exc:
        return _error_page(request, gw, user, exc)
    return gw.templates.TemplateResponse(request, "maintenance.html", {
        "user": user, "o": overview})
