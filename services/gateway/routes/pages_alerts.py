"""The alerts page: standing and recent alerts, live over SSE, with acknowledge buttons.

Each open page holds its own core NATS subscription to ``alert.*``; alert traffic is
small and only admins watch it, so the shared live hub is left to the busy streams.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from labfleet.shared.events.alert import AlertStatus, AlertView
from pydantic import BaseModel, ConfigDict, ValidationError
from sse_starlette import EventSourceResponse

from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError
from .api_alerts import acknowledge, list_alerts

router = APIRouter(include_in_schema=False)


class _AlertFact(BaseModel):
    model_config = ConfigDict(extra="ignore")
    alert: AlertView


def render_alert_row(gw: Gateway, alert: AlertView, request: Request | None = None) -> str:
    """A row of the page (``request`` given: its form carries the session's CSRF token)
    or of the live stream, shared by every browser (app.js adds the token on submit)."""
    return gw.templates.get_template("_alert_row.html").render(a=alert, request=request)


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    rows: list[str] = []
    error = None
    open_count = 0
    try:
        reply = await list_alerts(gw, [], 200)
        rows = [render_alert_row(gw, a, request) for a in reply.alerts]
        open_count = reply.open_count
    except ApiError as exc:
        error = exc
    return gw.templates.TemplateResponse(request, "alerts.html", {
        "user": user, "rows": rows, "error": error, "open_count": open_count})


@router.get("/alerts/badge", response_class=HTMLResponse)
async def badge(gw: GatewayDep, _: PageUser) -> HTMLResponse:
    """The count of standing alerts for the navigation bar (empty when none or unknown)."""
    with contextlib.suppress(ApiError):
        count = (await list_alerts(gw, [AlertStatus.OPEN], 1)).open_count
        if count:
            return HTMLResponse(f'<span class="badge" title="standing alerts">{count}</span>')
    return HTMLResponse("")


@router.get("/alerts/stream")
async def alerts_stream(gw: GatewayDep, _: PageUser) -> EventSourceResponse:
    """``alert-<id>`` replaces a row; ``alert-new`` adds one on top; ``count`` the header."""
    queue: asyncio.Queue[tuple[str, AlertView]] = asyncio.Queue(maxsize=500)

    async def on_msg(msg: Any) -> None:
        with contextlib.suppress(ValidationError, asyncio.QueueFull):
            queue.put_nowait((msg.subject, _AlertFact.model_validate_json(msg.data).alert))

    sub = await gw.bus.nc.subscribe("alert.*", cb=on_msg)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while not gw.hub.closing.is_set():
                try:
                    subject, alert = await asyncio.wait_for(queue.get(), timeout=5.0)
                except TimeoutError:
                    continue
                row = render_alert_row(gw, alert)
                new = subject == "alert.raised"
                if new:  # a reopened alert: its old row goes, the new one comes on top
                    yield {"event": f"alert-{alert.alert_id}", "data": ""}
                yield {"event": "alert-new" if new else f"alert-{alert.alert_id}", "data": row}
                with contextlib.suppress(ApiError):
                    count = (await list_alerts(gw, [AlertStatus.OPEN], 1)).open_count
                    yield {"event": "count", "data": str(count)}
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return EventSourceResponse(events(), ping=15)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge_page(alert_id: uuid.UUID, gw: GatewayDep, user: PageUser) -> Response:
    await acknowledge(gw, alert_id, user.username)
    return RedirectResponse("/alerts", status_code=303)
