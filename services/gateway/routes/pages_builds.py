"""Pages: the build list with its submit form, a build with its live log."""
from __future__ import annotations

import asyncio
import contextlib
import html
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from labfleet.shared.events.build import BuildSpec, BuildView
from labfleet.shared.events.resource import Arch
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from .. import fleet, handlers
from ..adapters.live import build_key
from ..adapters.state import read_log
from ..context import Gateway
from ..deps import GatewayDep, PageUser
from ..domain.errors import ApiError
from ..domain.presentation import build_progress
from .api_artifacts import artifact_response
from .forms import split_list

router = APIRouter(include_in_schema=False)


def render_build_row(gw: Gateway, build: BuildView) -> str:
    return gw.templates.get_template("_build_row.html").render(
        b=build, progress=build_progress(build.status, build.phase))


def render_build_status(gw: Gateway, build: BuildView) -> str:
    return gw.templates.get_template("_build_status.html").render(
        b=build, progress=build_progress(build.status, build.phase))


async def _builds_page(request: Request, gw: Gateway, user: Any, form: dict[str, Any],
                       status_code: int = 200) -> Response:
    builds: list[BuildView] = []
    error = None
    try:
        builds = await handlers.list_builds(gw, limit=100)
    except ApiError as exc:
        error = exc
    servers: list[str] = []
    with contextlib.suppress(ApiError):
        views = await gw.hub.resources(lambda: handlers.load_build_servers(gw))
        servers = sorted(v.name for v in views.values())[:500]
    return gw.templates.TemplateResponse(request, "builds.html", {
        "user": user, "rows": [render_build_row(gw, b) for b in builds], "error": error,
        "form": form, "archs": list(Arch), "servers": servers,
        "ids": ",".join(str(b.build_id) for b in builds)}, status_code=status_code)


@router.get("/builds", response_class=HTMLResponse)
async def builds(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    return await _builds_page(request, gw, user, {"values": {"ref": "HEAD"}, "errors": {}})


@router.post("/builds", response_class=HTMLResponse)
async def submit(request: Request, gw: GatewayDep, user: PageUser) -> Response:
    raw = await request.form()
    values = {k: v for k, v in raw.items() if isinstance(v, str)}
    errors: dict[str, str] = {}
    alternatives: list[str] = []
    try:
        spec = BuildSpec(
            repo_url=values.get("repo_url", "").strip(), ref=values.get("ref", "").strip()
            or "HEAD", arch=values.get("arch", ""), config=values.get("config", "").strip(),
            make_targets=split_list(values.get("make_targets", "")),
            artifacts=split_list(values.get("artifacts", "")),
            server=values.get("server") or None)
        reply = await handlers.submit_build(gw, spec, user)
        return RedirectResponse(f"/builds/{reply.build_id}", status_code=303)
    except ValidationError as exc:
        for e in exc.errors():
            errors.setdefault(str(e["loc"][0]) if e["loc"] else "_form", str(e["msg"]))
    except ApiError as exc:
        errors[exc.field or "_form"] = exc.message + (f" — {exc.hint}" if exc.hint else "")
        alternatives = [str(a) for a in exc.details.get("alternatives", [])]  # type: ignore[union-attr]
    form = {"values": values, "errors": errors, "alternatives": alternatives}
    return await _builds_page(request, gw, user, form, status_code=422)


@router.get("/builds/stream")
async def builds_stream(gw: GatewayDep, _: PageUser, ids: str = "") -> EventSourceResponse:
    wanted = []
    for text in ids.split(",")[:500]:
        with contextlib.suppress(ValueError):
            wanted.append(uuid.UUID(text))
    client = gw.hub.connect(build_key(i) for i in wanted)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while not gw.hub.closing.is_set():
                try:
                    keys = await asyncio.wait_for(client.queue.get(), timeout=5.0)
                except TimeoutError:
                    continue
                for key in sorted(keys):
                    build_id = uuid.UUID(key.split(":", 1)[1])
                    with contextlib.suppress(ApiError):
                        build = await handlers.get_build(gw, build_id)
                        yield {"event": f"build-{build_id}", "data": render_build_row(gw, build)}
        finally:
            gw.hub.disconnect(client)

    return EventSourceResponse(events(), ping=15)


@router.get("/builds/{build_id}", response_class=HTMLResponse)
async def build_page(request: Request, build_id: uuid.UUID, gw: GatewayDep, user: PageUser
                     ) -> Response:
    try:
        build = await handlers.get_build(gw, build_id)
    except ApiError as exc:
        return gw.templates.TemplateResponse(request, "error.html", {
            "user": user, "status": exc.status, "message": exc.message, "hint": exc.hint},
            status_code=exc.status)
    detail = await fleet.build_detail(gw, build_id)
    return gw.templates.TemplateResponse(request, "build.html", {
        "user": user, "b": build, "d": detail, "status_html": render_build_status(gw, build)})


@router.post("/builds/{build_id}/keep")
async def keep(request: Request, build_id: uuid.UUID, gw: GatewayDep, user: PageUser
               ) -> Response:
    """Pin or unpin, and add tags, from the build page."""
    form = await request.form()
    try:
        if "pinned" in form:
            await fleet.pin_build(gw, build_id, form.get("pinned") == "1", user)
        tags = split_list(str(form.get("tags") or ""))
        if tags:
            await fleet.tag_build(gw, build_id, tags, False, user)
    except (ApiError, ValueError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        return gw.templates.TemplateResponse(request, "error.html", {
            "user": user, "status": 422, "message": message,
            "hint": "go back to the build and correct it"}, status_code=422)
    return RedirectResponse(f"/builds/{build_id}", status_code=303)


@router.get("/builds/{build_id}/log/stream")
async def log_stream(build_id: uuid.UUID, gw: GatewayDep, _: PageUser) -> EventSourceResponse:
    """The log from its first chunk, then live; status changes alongside; ``eof`` at the end."""
    client = gw.hub.connect([build_key(build_id)])
    out: asyncio.Queue[dict[str, str] | None] = asyncio.Queue(maxsize=1000)

    async def pump_log() -> None:
        async for chunk in read_log(gw.bus.js, build_id, follow=True):
            # one line per event: newlines travel as entities, which the <pre> turns back
            text = html.escape(chunk.text).replace("\r", "").replace("\n", "&#10;")
            await out.put({"event": "log", "data": text})
        await out.put(None)

    async def pump_status() -> None:
        while True:
            await client.queue.get()
            with contextlib.suppress(ApiError):
                build = await handlers.get_build(gw, build_id)
                await out.put({"event": "status", "data": render_build_status(gw, build)})

    async def events() -> AsyncIterator[dict[str, str]]:
        tasks = [asyncio.create_task(pump_log()), asyncio.create_task(pump_status())]
        try:
            while not gw.hub.closing.is_set():
                try:
                    item = await asyncio.wait_for(out.get(), timeout=5.0)
                except TimeoutError:
                    continue
                if item is None:
                    with contextlib.suppress(ApiError):
                        build = await handlers.get_build(gw, build_id)
                        yield {"event": "status", "data": render_build_status(gw, build)}
                    yield {"event": "eof", "data": "end of log"}
                    return
                yield item
        finally:
            for task in tasks:
                task.cancel()
            gw.hub.disconnect(client)

    return EventSourceResponse(events(), ping=15)


@router.get("/builds/{build_id}/artifacts/{name}")
async def download(build_id: uuid.UUID, name: Annotated[str, Path(pattern=r"^[^/\\]+$")],
                   gw: GatewayDep, _: PageUser) -> Response:
    """The same bytes as the API's download, for a logged-in browser."""
    return await artifact_response(gw, build_id, name)


@router.post("/builds/{build_id}/cancel")
async def cancel(build_id: uuid.UUID, gw: GatewayDep, user: PageUser) -> Response:
    await handlers.cancel_build(gw, build_id, user)
    return RedirectResponse(f"/builds/{build_id}", status_code=303)
