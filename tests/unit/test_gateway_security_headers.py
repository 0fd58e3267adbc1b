"""The security headers and the session cookie's Secure flag, on a bare ASGI app."""
from __future__ import annotations

import asyncio

import httpx
from labfleet.gateway.routes.system import listens_on_loopback
from labfleet.gateway.security_headers import SecurityHeadersMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def app() -> Starlette:
    async def login(request: Request) -> PlainTextResponse:
        request.session["sid"] = "x"
        return PlainTextResponse("ok", headers={"X-Frame-Options": "SAMEORIGIN"})

    return Starlette(routes=[Route("/login", login)], middleware=[
        Middleware(SecurityHeadersMiddleware, session_cookie="labfleet_session"),
        Middleware(SessionMiddleware, secret_key="k", session_cookie="labfleet_session",
                   same_site="lax")])


def get(base_url: str, path: str) -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app()),
                                     base_url=base_url) as http:
            return await http.get(path)
    return asyncio.run(run())


def test_session_cookie_is_secure_only_over_https() -> None:
    plain = get("http://gw.example", "/login")
    assert "secure" not in plain.headers["set-cookie"].lower()
    secure = get("https://gw.example", "/login")
    cookie = secure.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert secure.headers["content-security-policy"].startswith("default-src 'self'")
    assert secure.headers["x-content-type-options"] == "nosniff"
    # a route's own stricter or looser choice is kept
    assert secure.headers["x-frame-options"] == "SAMEORIGIN"


def test_loopback_addresses() -> None:
    assert listens_on_loopback("127.0.0.1") and listens_on_loopback("::1")
    assert listens_on_loopback("localhost") and listens_on_loopback("127.0.0.2")
    assert not listens_on_loopback("0.0.0.0") and not listens_on_loopback("::")
    assert not listens_on_loopback("10.0.0.5") and not listens_on_loopback("gw.example")
