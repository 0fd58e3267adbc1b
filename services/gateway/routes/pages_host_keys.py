"""The host-key page: pinned and presented fingerprints, and an Accept button."""
from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .. import host_keys
from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError

router = APIRouter(include_in_schema=False)

#: where a resource's own page is, by kind
PAGES = {"build_server": "/build-servers", "qemu_host": "/qemu-hosts"}


async def _page(request: Request, gw: Gateway, user: Any, resource_id: uuid.UUID, *,
                accepted: bool = False, action_error: ApiError | None = None) -> Response:
    try:
        k = await host_keys.check(gw, resource_id)
    except ApiError as exc:
        return gw.templates.TemplateResponse(request, "host_key.html", {
            "user": user, "k": None, "action_error": exc}, status_code=exc.status)
    back = f"{PAGES.get(k.kind, '/build-servers')}/{k.resource_id}"
    return gw.templates.TemplateResponse(request, "host_key.html", {
        "user": user, "k": k, "back": back, "accepted": accepted,
        "action_error": action_error},
        status_code=action_error.status if action_error else 200)


@router.get("/resources/{resource_id}/host-key", response_class=HTMLResponse)
async def host_key(request: Request, resource_id: uuid.UUID, gw: GatewayDep, user: PageUser,
                   accepted: bool = False) -> Response:
    return await _page(request, gw, user, resource_id, accepted=accepted)


@router.post("/resources/{resource_id}/host-key/accept")
async def accept(request: Request, resource_id: uuid.UUID, gw: GatewayDep,
                 user: PageUser) -> Response:
    form = await request.form()
    try:
        await host_keys.accept(gw, resource_id, str(form.get("fingerprint") or ""), user)
    except ApiError as exc:
        return await _page(request, gw, user, resource_id, action_error=exc)
    return RedirectResponse(f"/resources/{resource_id}/host-key?accepted=true",
                            status_code=303)
