"""``/login`` and ``/logout`` for the pages."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..auth import log_in, log_out
from ..deps import GatewayDep

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
    user = await log_in(gw.accounts, request, username.strip(), password) if username else None
    gw.metrics.logins.labels("ok" if user else "refused").inc()
    if user is None:
        return gw.templates.TemplateResponse(request, "login.html", {
            "user": None, "next": _safe_next(next), "username": username,
            "error": "Wrong user name or password."}, status_code=401)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
async def logout(request: Request, gw: GatewayDep) -> Response:
    await log_out(gw.accounts, request)
    return RedirectResponse("/login", status_code=303)
