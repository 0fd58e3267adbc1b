"""The gateway as a browser meets it: forged cross-site posts are refused, log-ins are
throttled and logged, every response carries the security headers, /docs loads nothing
from another site and /metrics stays private beyond loopback."""
from __future__ import annotations

import contextlib
import logging
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from labfleet.shared.events.resource import (
    RegisterBuildServer,
    RegistrationReply,
    ResourceListReply,
)

from .test_gateway_api import server_view
from .test_gateway_support import (  # noqa: F401 - gateway is the shared fixture
    RunningGateway,
    browser_log_in,
    csrf_from_form,
    fixed,
    gateway,
    responder,
)

pytestmark = pytest.mark.integration

REGISTRATION = {"hostname": "csrf-probe", "address": "127.0.0.1", "ssh_port": "2222",
                "username": "lab", "auth": "password", "password": "s3cret-pw",
                "architectures": "x86_64"}


@contextlib.asynccontextmanager
async def logged_in(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.anonymous() as http:
        r = await browser_log_in(http, "admin", gateway.admin_password)
        assert r.status_code == 303, r.text
        yield http


# ---- CSRF -----------------------------------------------------------------------------


async def test_cross_site_posts_are_refused_and_same_site_forms_work(
        gateway: RunningGateway) -> None:
    view = server_view(f"csrf-{uuid.uuid4().hex[:6]}")
    async with logged_in(gateway) as http, responder(gateway.nc, "resource.cmd.list",
                               fixed(ResourceListReply(ok=True, resources=[]))), \
            responder(gateway.nc, RegisterBuildServer.subject,
                      fixed(RegistrationReply(ok=True, resource=view))) as commands:
        page = await http.get("/build-servers")
        assert page.status_code == 200
        token = csrf_from_form(page.text)

        # another site's page posting with the browser's cookie: no token at all
        forged = await http.post("/build-servers", data=REGISTRATION,
                                 headers={"Accept": "text/html"})
        assert forged.status_code == 403
        assert "security token (CSRF token)" in forged.text
        assert forged.headers["content-type"].startswith("text/html")
        # … a made-up token, answered as JSON to a client that does not ask for HTML
        wrong = await http.post("/build-servers",
                                data={**REGISTRATION, "csrf_token": "x" * 43})
        assert wrong.status_code == 403
        assert wrong.json()["error"]["code"] == "csrf_refused"
        assert "does not match" in wrong.json()["error"]["message"]
        # … the right token (read by a script), but the browser names the other site
        for header in ({"Origin": "https://evil.example"},
                       {"Referer": "https://evil.example/page"},
                       {"Origin": "null"}):
            other = await http.post("/build-servers",
                                    data={**REGISTRATION, "csrf_token": token}, headers=header)
            assert other.status_code == 403, header
            assert "another site" in other.json()["error"]["message"]
        # the same for the header htmx sends
        htmx_forged = await http.post("/build-servers", data=REGISTRATION,
                                      headers={"HX-Request": "true", "X-CSRF-Token": "nope"})
        assert htmx_forged.status_code == 403
        # nothing reached inventory
        assert commands == []

        # the gateway's own form, as a browser sends it (same origin, the form's token)
        own = await http.post("/build-servers", data={**REGISTRATION, "csrf_token": token},
                              headers={"Origin": gateway.base_url,
                                       "Referer": f"{gateway.base_url}/build-servers"})
        assert own.status_code == 200, own.text
        assert len(commands) == 1
        # htmx sends the token in its header
        by_htmx = await http.post("/build-servers", data=REGISTRATION,
                                  headers={"HX-Request": "true", "X-CSRF-Token": token})
        assert by_htmx.status_code == 200 and len(commands) == 2

        # a forged log-out does not end the session
        assert (await http.post("/logout")).status_code == 403
        assert (await http.get("/build-servers")).status_code == 200

    # a bearer-token API call needs no CSRF token
    async with gateway.client() as api, \
            responder(gateway.nc, RegisterBuildServer.subject,
                      fixed(RegistrationReply(ok=True, resource=view))):
        made = await api.post("/api/v1/build-servers", json={
            "hostname": view.name, "address": "127.0.0.1", "ssh_port": 2222,
            "username": "lab", "password": "s3cret-pw", "architectures": ["x86_64"]})
        assert made.status_code == 201, made.text


async def test_behind_a_tls_proxy_the_own_origin_is_https(gateway: RunningGateway) -> None:
    gw: Any = gateway.gateway
    plain = gw.settings
    host = gateway.base_url.removeprefix("http://")
    try:
        gw.settings = plain.model_copy(update={"https": True})
        async with gateway.anonymous() as http:
            token = csrf_from_form((await http.get("/login")).text)
            form = {"username": "admin", "password": gateway.admin_password,
                    "csrf_token": token}
            downgraded = await http.post("/login", data=form,
                                         headers={"Origin": f"http://{host}"})
            assert downgraded.status_code == 403
            assert f"(https://{host})" in downgraded.json()["error"]["message"]
            ok = await http.post("/login", data=form, headers={"Origin": f"https://{host}"})
            assert ok.status_code == 303
    finally:
        gw.settings = plain


async def test_login_form_needs_its_token(gateway: RunningGateway) -> None:
    async with gateway.anonymous() as http:
        # another site logging the browser into an account of the attacker's choosing
        forged = await http.post("/login", data={"username": "admin",
                                                 "password": gateway.admin_password})
        assert forged.status_code == 403
        assert "security token" in forged.json()["error"]["message"]
        still_out = await http.get("/build-servers")
        assert still_out.status_code == 303 and still_out.headers["location"].startswith("/login")


# ---- log-in throttling ------------------------------------------------------------------


async def test_failed_logins_are_logged_and_throttled(
        gateway: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    name = f"guessed-{uuid.uuid4().hex[:6]}"
    password = f"right-{uuid.uuid4().hex}"
    await gateway.gateway.accounts.create_user(name, password)
    throttle = gateway.gateway.login_throttle
    throttle.clear()
    caplog.set_level(logging.WARNING, logger="labfleet.gateway.routes.pages_auth")
    try:
        async with gateway.anonymous() as http:
            guesses = [f"guess-{i}-{uuid.uuid4().hex[:4]}" for i in
                       range(throttle.failures_per_user)]
            for guess in guesses:
                r = await browser_log_in(http, name, guess)
                assert r.status_code == 401
            # the allowance is spent: even the right password waits now
            r = await browser_log_in(http, name, password)
            assert r.status_code == 429
            retry_after = int(r.headers["retry-after"])
            assert 0 < retry_after <= throttle.first_lockout_s
            assert "Too many failed log-ins" in r.text
            assert re.search(rf"Try again in {retry_after} s \(at \d\d:\d\d:\d\d UTC\)", r.text)
        failures = [rec for rec in caplog.records if "log-in failed" in rec.getMessage()
                    and getattr(rec, "username", None) == name]
        assert len(failures) == len(guesses)
        assert all(getattr(rec, "address", None) == "127.0.0.1" for rec in failures)
        throttled = [rec for rec in caplog.records if "too many" in rec.getMessage()]
        assert throttled and getattr(throttled[-1], "address", None) == "127.0.0.1"
        # no password in any record, in its message or in its fields
        for rec in caplog.records:
            text = rec.getMessage() + " ".join(str(v) for v in vars(rec).values())
            assert password not in text
            assert not any(guess in text for guess in guesses)
    finally:
        throttle.clear()


async def test_unknown_and_known_user_names_cost_the_same(gateway: RunningGateway) -> None:
    """A property, not a speed target: the answer's delay must not tell which names
    exist.  Medians over alternating tries; the ratio is near 1 (it was ~16)."""
    throttle = gateway.gateway.login_throttle
    known: list[float] = []
    unknown: list[float] = []
    try:
        async with gateway.anonymous() as http:
            token = csrf_from_form((await http.get("/login")).text)

            async def attempt(username: str) -> float:
                throttle.clear()
                started = time.perf_counter()
                r = await http.post("/login", data={"username": username,
                                                    "password": "not-the-password",
                                                    "csrf_token": token})
                elapsed = time.perf_counter() - started
                assert r.status_code == 401
                return elapsed

            await attempt("admin")  # warm up the connection
            for _ in range(9):
                known.append(await attempt("admin"))
                unknown.append(await attempt(f"nobody-{uuid.uuid4().hex[:8]}"))
    finally:
        throttle.clear()
    ratio = statistics.median(unknown) / statistics.median(known)
    print(f"\n[gateway] log-in median: known {statistics.median(known) * 1000:.1f} ms, "
          f"unknown {statistics.median(unknown) * 1000:.1f} ms (ratio {ratio:.2f})")
    assert 0.5 < ratio < 2.0


# ---- headers ---------------------------------------------------------------------------


def assert_security_headers(r: httpx.Response, what: str) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, what
    assert "script-src 'self'" in csp, what
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, what
    assert r.headers.get("x-frame-options") == "DENY", what
    assert r.headers.get("x-content-type-options") == "nosniff", what
    assert r.headers.get("referrer-policy") == "same-origin", what


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\s(on[a-z]+|hx-on[:\w-]*|style)\s*=", re.IGNORECASE)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


async def test_every_page_and_api_response_carries_the_security_headers(
        gateway: RunningGateway) -> None:
    from labfleet.gateway.app import API_PREFIX, API_ROUTES, ROOT_ROUTES

    paths = [prefix + route.path
             for modules, prefix in ((API_ROUTES, API_PREFIX), (ROOT_ROUTES, ""))
             for module in modules for route in module.router.routes
             if isinstance(route, APIRoute) and "GET" in route.methods]
    assert len(paths) > 20
    seen: list[str] = []
    async with logged_in(gateway) as http, gateway.client() as api, \
            responder(gateway.nc, "resource.cmd.list",
                      fixed(ResourceListReply(ok=True, resources=[]))):
        for template in paths:
            path = concrete(template)
            client = api if path.startswith("/api/") else http
            # streams answer for ever: their headers are enough
            async with client.stream("GET", path, headers={"Accept": "text/html"}) as r:
                assert_security_headers(r, path)
                if r.headers.get("content-type", "").startswith("text/html") \
                        and not path.endswith("/stream"):
                    html = (await r.aread()).decode()
                    assert not INLINE_SCRIPT.search(html), path
                    assert not INLINE_HANDLER.search(html), (path, INLINE_HANDLER.search(html))
            seen.append(path)
        for path in ("/static/app.js", "/no-such-page", "/login", "/openapi.json"):
            assert_security_headers(await http.get(path, headers={"Accept": "text/html"}),
                                    path)
        assert_security_headers(await api.get("/api/v1/builds/not-a-uuid"), "422")
    assert "/build-servers" in seen and "/api/v1/build-servers" in seen


async def test_session_cookie_is_httponly_and_samesite(gateway: RunningGateway) -> None:
    async with gateway.anonymous() as http:
        r = await browser_log_in(http, "admin", gateway.admin_password)
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain HTTP here: a Secure cookie would not come back


# ---- /docs and /metrics ------------------------------------------------------------------


async def test_docs_load_nothing_from_another_site(gateway: RunningGateway) -> None:
    async with gateway.anonymous() as http:
        r = await http.get("/docs")
        assert r.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert "/static/vendor/swagger-ui-bundle.js" in urls
        assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "http://" not in r.text and "https://" not in r.text
        assert not INLINE_SCRIPT.search(r.text)
        assert (await http.get("/static/vendor/swagger-ui-bundle.js")).status_code == 200
        # ReDoc would come from a CDN: not offered
        assert (await http.get("/redoc")).status_code == 404


async def test_metrics_are_private_beyond_loopback(gateway: RunningGateway) -> None:
    gw: Any = gateway.gateway
    loopback = gw.settings
    async with gateway.anonymous() as anon, gateway.client() as api:
        assert (await anon.get("/metrics")).status_code == 200  # listening on 127.0.0.1
        try:
            gw.settings = loopback.model_copy(update={"http_host": "0.0.0.0"})
            refused = await anon.get("/metrics")
            assert refused.status_code == 403
            error = refused.json()["error"]
            assert error["code"] == "metrics_not_public"
            assert "0.0.0.0" in error["message"] and "LABFLEET_METRICS_PUBLIC" in error["hint"]
            bad = await anon.get("/metrics", headers={"Authorization": "Bearer lf_tok_x_y"})
            assert bad.status_code == 401
            assert (await api.get("/metrics")).status_code == 200
            gw.settings = loopback.model_copy(update={"http_host": "0.0.0.0",
                                                      "metrics_public": True})
            assert (await anon.get("/metrics")).status_code == 200
        finally:
            gw.settings = loopback
