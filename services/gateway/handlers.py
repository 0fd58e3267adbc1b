"""What each request does, as plain functions of the gateway's dependencies.

The API routes and the pages both call these, so a form and a ``curl`` get the same
answers and the same errors.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from labfleet.shared.events.build import (
    ArtifactListReply,
    BuildListReply,
    BuildReply,
    BuildSpec,
    BuildView,
    CancelBuild,
    GetBuild,
    ListArtifacts,
    ListBuilds,
    SubmitBuild,
    SubmitBuildReply,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import GetSampleHistory, HostSample, SampleHistoryReply
from labfleet.shared.events.resource import (
    Arch,
    GetResource,
    ListResources,
    RegistrationReply,
    RemoveResource,
    ResourceKind,
    ResourceListReply,
    ResourceReply,
    ResourceView,
)
from labfleet.shared.events.system import Ping, Pong

from labfleet.scheduler.domain.repo_urls import allowed_schemes, url_refusal

from .adapters.accounts import User
from .adapters.commands import ask, ask_ok
from .adapters.state import HealthState
from .context import Gateway
from .domain.errors import ApiError
from .domain.paging import Page, matches_query, paginate
from .models import (
    ArtifactPublic,
    BuildServerCreate,
    BuildServerDetail,
    BuildServerPublic,
    HealthReport,
    ServiceLiveness,
    artifact_public,
)

#: the services whose liveness ``/healthz`` reports
SERVICES = ("gateway", "inventory", "monitor", "scheduler", "builder", "deployer",
            "alerter")

#: registration probes SSH and runs detection commands: allow for slow hosts
REGISTER_TIMEOUT_S = 90.0


# ---- build servers --------------------------------------------------------------------


async def register_build_server(gw: Gateway, body: BuildServerCreate, user: User
                                ) -> ResourceView:
    reply = await ask_ok(gw.bus, body.command(requested_by=user.username), RegistrationReply,
                         timeout=REGISTER_TIMEOUT_S)
    if reply.resource is None:
        raise ApiError(502, "bad_reply", "inventory accepted the server but sent no record")
    gw.hub.remember(reply.resource)
    return reply.resource


async def load_build_servers(gw: Gateway) -> list[ResourceView]:
    reply = await ask_ok(gw.bus, ListResources(kind=ResourceKind.BUILD_SERVER),
                         ResourceListReply, timeout=15.0)
    return [r for r in reply.resources if r.kind == ResourceKind.BUILD_SERVER]


async def _health_of(gw: Gateway, resource_id: uuid.UUID) -> HealthState | None:
    cached = gw.hub.health.get(resource_id)
    if cached is None:
        cached = await gw.state.health(resource_id)
        if cached is not None:
            gw.hub.health[resource_id] = cached
    return cached


async def _sample_of(gw: Gateway, resource_id: uuid.UUID) -> HostSample | None:
    cached = gw.hub.samples.get(resource_id)
    if cached is None:
        cached = await gw.state.latest_sample(resource_id)
        if cached is not None:
            gw.hub.samples[resource_id] = cached
    return cached


async def build_server_public(gw: Gateway, view: ResourceView) -> BuildServerPublic:
    health, sample = await asyncio.gather(_health_of(gw, view.resource_id),
                                          _sample_of(gw, view.resource_id))
    active = len(gw.hub.active_builds.get(view.resource_id, ()))
    return BuildServerPublic.build(view, health, sample, active)


async def build_server_page(gw: Gateway, *, query: str | None = None,
                            status: str | None = None, page: int = 1, size: int = 50
                            ) -> Page[BuildServerPublic]:
    await gw.hub.seed()
    await _seed_active_builds(gw)
    views = await gw.hub.resources(lambda: load_build_servers(gw))
    chosen = [v for v in views.values()
              if v.kind == ResourceKind.BUILD_SERVER
              and matches_query(query, v.name, v.ssh.address, " ".join(v.architectures),
                                " ".join(f"{k}={x}" for k, x in v.labels.items()))]
    if status:
        def status_of(v: ResourceView) -> str:
            h = gw.hub.health.get(v.resource_id)
            return h.status.value if h else "unknown"
        chosen = [v for v in chosen if status_of(v) == status]
    chosen.sort(key=lambda v: v.name)
    window = paginate(chosen, page, size)
    rows = await asyncio.gather(*(build_server_public(gw, v) for v in window.items))
    return Page(items=list(rows), total=window.total, page=window.page, size=window.size)


async def _seed_active_builds(gw: Gateway) -> None:
    """Once: which builds run where now (later changes arrive as build events)."""
    if gw.hub.builds_seeded:
        return
    try:
        builds = await list_builds(gw, limit=1000)
    except ApiError:
        return  # the builder is not up yet; try again on the next page
    gw.hub.seed_active_builds((b.build_id, b.server_id, b.status) for b in builds)


async def get_build_server(gw: Gateway, resource_id: uuid.UUID) -> BuildServerPublic:
    reply = await ask_ok(gw.bus, GetResource(resource_id=resource_id), ResourceReply)
    if reply.resource is None or reply.resource.kind != ResourceKind.BUILD_SERVER:
        raise ApiError(404, "not_found", f"no build server has the id {resource_id}",
                       hint="list them with GET /api/v1/build-servers")
    gw.hub.remember(reply.resource)
    return await build_server_public(gw, reply.resource)


async def build_server_detail(gw: Gateway, resource_id: uuid.UUID, *,
                              history_for: timedelta = timedelta(hours=1)) -> BuildServerDetail:
    server = await get_build_server(gw, resource_id)
    detail = BuildServerDetail(**server.model_dump())
    try:
        history = await ask_ok(gw.bus, GetSampleHistory(
            resource_id=resource_id, since=datetime.now(UTC) - history_for, limit=2000),
            SampleHistoryReply)
        detail.history = history.samples
    except ApiError as exc:
        # the server is still worth showing without its plot; say why it is missing
        detail.history_error = ErrorInfo(code=exc.code, message=exc.message, hint=exc.hint)
    return detail


async def remove_build_server(gw: Gateway, resource_id: uuid.UUID, user: User) -> None:
    await ask_ok(gw.bus, RemoveResource(resource_id=resource_id, requested_by=user.username),
                 ResourceReply)
    gw.hub.forget_resources()


# ---- builds ---------------------------------------------------------------------------


async def submit_build(gw: Gateway, spec: BuildSpec, user: User) -> SubmitBuildReply:
    refusal = url_refusal(spec.repo_url, allowed_schemes(gw.settings.build_allowed_url_schemes))
    if refusal is not None:  # refused here too: a URL that must not be fetched is not sent on
        raise ApiError(422, refusal.code, refusal.message, refusal.hint, refusal.field,
                       **refusal.details)
    reply = await ask(gw.bus, SubmitBuild(spec=spec, requested_by=user.username),
                      SubmitBuildReply, timeout=15.0)
    if not reply.ok:
        error = reply.error or ErrorInfo(code="refused", message="the build was refused")
        details = dict(error.details)
        if reply.alternatives:
            details["alternatives"] = reply.alternatives
        field = error.field or ("server" if reply.alternatives else None)
        # a refused spec is the request's fault whatever the reason: 422, never 404
        raise ApiError(422, error.code, error.message, error.hint, field, **details)
    if reply.build_id is None:
        raise ApiError(502, "bad_reply", "the scheduler accepted the build without an id")
    return reply


async def list_builds(gw: Gateway, limit: int = 100) -> list[BuildView]:
    reply = await ask_ok(gw.bus, ListBuilds(limit=limit), BuildListReply)
    return reply.builds


#: how long a build the scheduler accepted may stay unknown to the builder: the builder
#: learns of it from the ``build.requested`` event, a few milliseconds after the reply
BUILD_SETTLE_S = 3.0


async def get_build(gw: Gateway, build_id: uuid.UUID) -> BuildView:
    deadline = asyncio.get_running_loop().time() + BUILD_SETTLE_S
    while True:
        try:
            reply = await ask_ok(gw.bus, GetBuild(build_id=build_id), BuildReply)
            break
        except ApiError as exc:
            if exc.code != "not_found" or asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.1)
    if reply.build is None:
        raise ApiError(404, "not_found", f"no build has the id {build_id}",
                       hint="list builds with GET /api/v1/builds")
    return reply.build


async def cancel_build(gw: Gateway, build_id: uuid.UUID, user: User) -> BuildView | None:
    reply = await ask_ok(gw.bus, CancelBuild(build_id=build_id,
                                             reason=f"cancelled by {user.username}"), BuildReply)
    return reply.build


async def list_artifacts(gw: Gateway, *, build_id: uuid.UUID | None = None,
                         commit: str | None = None, ref: str | None = None,
                         arch: Arch | None = None, latest: bool = False
                         ) -> list[ArtifactPublic]:
    if build_id is None and commit is None and ref is None:
        raise ApiError(422, "missing_selector", "say which artifacts: build_id, commit or ref",
                       hint="e.g. ?build_id=<id>, ?commit=<sha>, or ?ref=main&arch=arm64"
                            "&latest=1", field="build_id")
    reply = await ask_ok(gw.bus, ListArtifacts(build_id=build_id, commit=commit, ref=ref,
                                               arch=arch, latest=latest), ArtifactListReply)
    out = []
    for a in reply.artifacts:
        owner = reply.build_id or build_id
        if owner is None:
            owner = uuid.UUID(a.object_name.split("/", 1)[0])
        out.append(artifact_public(owner, a.name, a.size, a.sha256))
    return out


# ---- liveness -------------------------------------------------------------------------


async def _ping(gw: Gateway, service: str, timeout: float) -> ServiceLiveness:
    started = time.perf_counter()
    try:
        pong = await gw.bus.request(Ping(), Pong, timeout=timeout,
                                    subject=f"system.cmd.ping.{service}")
    except Exception as exc:  # noqa: BLE001 - any failure means "down", said with its cause
        reason = ("no instance is running" if type(exc).__name__ == "NoRespondersError"
                  else f"no answer within {timeout:g} s" if "Timeout" in type(exc).__name__
                  else f"{type(exc).__name__}: {exc}")
        return ServiceLiveness(status="down", error=reason)
    return ServiceLiveness(status="up", instance=pong.instance, version=pong.version,
                           started_at=pong.started_at,
                           latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def service_liveness(gw: Gateway, timeout: float = 1.0) -> HealthReport:
    results = await asyncio.gather(*(_ping(gw, s, timeout) for s in SERVICES))
    services = dict(zip(SERVICES, results, strict=True))
    ok = all(r.status == "up" for r in results)
    return HealthReport(status="ok" if ok else "degraded", services=services)

