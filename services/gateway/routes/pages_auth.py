"""``/login`` and ``/logout`` for the pages.

Failed log-ins are logged with the client's address (never the password) and throttled
per user name and address (``login_throttle``): a throttled try is answered 429 with
``Retry-After`` before any password is checked.
"""
from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..auth import log_in, log_out
from ..deps import GatewayDep

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    # only same-site paths: never bounce a fresh login to another site
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, gw: GatewayDep, next: str | None = None) -> Response:
    return gw.templates.TemplateResponse(request, "login.html", {
        "user": None, "next": _safe_next(next), "error": None, "username": ""})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, gw: GatewayDep, username: Annotated[str, Form()] = "",
                password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
                ) -> Response:
    name = username.strip()
    address = request.client.host if request.client else "unknown"
    wait = gw.login_throttle.retry_after(name, address)
    if wait > 0:
        seconds = math.ceil(wait)
        at = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%H:%M:%S UTC")
        gw.metrics.logins.labels("throttled").inc()
        log.warning("log-in refused: too many failed log-ins",
                    extra={"username": name, "address": address, "retry_after_s": seconds})
        return gw.templates.TemplateResponse(request, "login.html", {
            "user": None, "next": _safe_next(next), "username": username,
            "error": f"Too many failed log-ins for this user name or from this address. "
                     f"Try again in {seconds} s (at {at})."},
            status_code=429, headers={"Retry-After": str(seconds)})
    user = await log_in(gw.accounts, request, name, password)
    gw.metrics.logins.labels("ok" if user else "refused").inc()
    if user is None:
        gw.login_throttle.failed(name, address)
        log.warning("log-in failed: wrong user name or password",
                    extra={"username": name, "address": address})
        return gw.templates.TemplateResponse(request, "login.html", {
            "user": None, "next": _safe_next(next), "username": username,
            "error": "Wrong user name or password."}, status_code=401)
    gw.login_throttle.succeeded(name)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
async def logout(request: Request, gw: GatewayDep) -> Response:
    await log_out(gw.accounts, request)
    return RedirectResponse("/login", status_code=303)
