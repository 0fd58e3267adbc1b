"""Pages: the QEMU host dashboard (live rows over the gateway's SSE fan-out), the
registration form (errors beside the fields), and a host's detail page with plots."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from labfleet.shared.events.resource import Arch, ResourceView
from sse_starlette import EventSourceResponse

from ..adapters.live import server_key
from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError
from ..domain.presentation import history_plot, usage
from . import qemu_hosts_support as qemu
from .forms import empty_form, form_labels, form_secret, submit_registration
from .qemu_hosts_support import QemuHostCreate, QemuHostPublic

router = APIRouter(include_in_schema=False)

FORM_FIELDS = {"hostname", "address", "ssh_port", "username", "password", "private_key",
               "guest_architectures", "labels", "expected_host_key_fingerprint",
               "allocatable_vcpus", "allocatable_memory_mb", "image_dir"}


def render_row(gw: Gateway, host: QemuHostPublic) -> str:
    return gw.templates.get_template("_qemu_row.html").render(
        h=host, u=usage(host.sample), limit=gw.settings.host_utilization_warning_pct)


async def _dashboard(request: Request, gw: Gateway, user: Any, form: dict[str, Any] | None = None,
                     status_code: int = 200) -> Response:
    error, rows, ids = None, [], ""
    try:
        hosts = await qemu.listing(gw)
        rows = [render_row(gw, h) for h in hosts.items]
        ids = ",".join(str(h.id) for h in hosts.items)
    except ApiError as exc:
        error = exc
    return gw.templates.TemplateResponse(request, "qemu_hosts.html", {
        "user": user, "rows": rows, "ids": ids, "error": error, "form": form or empty_form(),
        "archs": list(Arch), "limit": gw.settings.host_utilization_warning_pct},
        status_code=status_code)


@router.get("/qemu-hosts", response_class=HTMLResponse)
async def dashboard(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    return await _dashboard(request, gw, user)


@router.get("/qemu-hosts/stream")
async def dashboard_stream(request: Request, gw: GatewayDep, _: PageUser, ids: str = ""
                           ) -> EventSourceResponse:
    """Rows of the hosts a page shows, re-rendered when their sample or health changes."""
    wanted = []
    for text in ids.split(",")[:500]:
        try:
            wanted.append(uuid.UUID(text))
        except ValueError:
            continue
    client = gw.hub.connect(server_key(i) for i in wanted)
    views: dict[uuid.UUID, ResourceView] = {}

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while not gw.hub.closing.is_set():
                try:
                    keys = await asyncio.wait_for(client.queue.get(), timeout=5.0)
                except TimeoutError:
                    continue
                for key in sorted(keys):
                    host_id = uuid.UUID(key.split(":", 1)[1])
                    if host_id not in views:
                        try:
                            views[host_id] = await qemu.get(gw, host_id)
                        except ApiError:
                            continue  # removed meanwhile
                    host = await qemu.public(gw, views[host_id])
                    gw.metrics.live_updates.inc()
                    yield {"event": f"row-{host_id}", "data": render_row(gw, host)}
        finally:
            gw.hub.disconnect(client)

    return EventSourceResponse(events(), ping=15, headers={"X-Accel-Buffering": "no"})


def form_to_model(values: dict[str, Any]) -> QemuHostCreate:
    return QemuHostCreate(
        hostname=values.get("hostname", "").strip(), address=values.get("address", "").strip(),
        ssh_port=values.get("ssh_port") or 22, username=values.get("username", "").strip(),
        **form_secret(values),
        guest_architectures=values.get("guest_architectures", []), labels=form_labels(values),
        expected_host_key_fingerprint=values.get("expected_host_key_fingerprint") or None,
        allocatable_vcpus=values.get("allocatable_vcpus") or None,
        allocatable_memory_mb=values.get("allocatable_memory_mb") or None,
        image_dir=values.get("image_dir") or None)


@router.post("/qemu-hosts", response_class=HTMLResponse)
async def register(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    raw = await request.form()
    values: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(v, str)}
    values["guest_architectures"] = [a for a in raw.getlist("guest_architectures")
                                     if isinstance(a, str)]
    form = await submit_registration(
        lambda: qemu.register(gw, form_to_model(values), user), values, FORM_FIELDS)
    if request.headers.get("HX-Request"):
        return gw.templates.TemplateResponse(request, "_qemu_register_form.html", {
            "form": form, "archs": list(Arch)})  # htmx swaps only 2xx answers
    return await _dashboard(request, gw, user, form=form,
                            status_code=422 if form["errors"] else 200)


@router.get("/qemu-hosts/{host_id}", response_class=HTMLResponse)
async def detail(request: Request, host_id: uuid.UUID, gw: GatewayDep, user: PageUser,
                 window: str = "hour") -> Response:
    try:
        host = await qemu.detail(gw, host_id, window)
    except ApiError as exc:
        return gw.templates.TemplateResponse(request, "error.html", {
            "user": user, "status": exc.status, "message": exc.message, "hint": exc.hint},
            status_code=exc.status)
    return gw.templates.TemplateResponse(request, "qemu_host.html", {
        "user": user, "h": host, "u": usage(host.sample), "row": render_row(gw, host),
        "plot": history_plot(host.history), "windows": list(qemu.WINDOWS),
        "limit": gw.settings.host_utilization_warning_pct})


@router.post("/qemu-hosts/{host_id}/remove")
async def remove(host_id: uuid.UUID, gw: GatewayDep, user: PageUser) -> Response:
    await qemu.remove(gw, host_id, user)
    return RedirectResponse("/qemu-hosts", status_code=303)
