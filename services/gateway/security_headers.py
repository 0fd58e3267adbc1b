"""Headers every gateway response carries, so a browser runs only the gateway's own
scripts, never shows its pages in a frame and does not guess content types.

The policy allows no inline script or style: the pages' small JavaScript lives in
``static/app.js`` (bar widths, confirmations, the CSRF token of htmx requests) and htmx is
told not to inject its indicator ``<style>`` (``base.html``'s ``htmx-config``).  Over HTTPS
(the request's scheme, which uvicorn takes from ``X-Forwarded-Proto`` of a trusted proxy)
the session cookie is also marked ``Secure``.
"""
from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    # Swagger UI draws its icons from data: URLs
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, session_cookie: str) -> None:
        self.app = app
        self.session_cookie = session_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if https:
                    self._secure_session_cookie(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _secure_session_cookie(self, headers: MutableHeaders) -> None:
        cookies = headers.getlist("set-cookie")
        if not any(c.startswith(f"{self.session_cookie}=") and "secure" not in c.lower()
                   for c in cookies):
            return
        del headers["set-cookie"]
        for cookie in cookies:
            if cookie.startswith(f"{self.session_cookie}=") and "secure" not in cookie.lower():
                cookie += "; secure"
            headers.append("set-cookie", cookie)
