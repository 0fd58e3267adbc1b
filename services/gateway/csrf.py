"""Protection of the pages against cross-site request forgery.

A browser sends the session cookie with any request to the gateway, also one that another
site's page makes it send.  So every state-changing request that may rest on the cookie
(every POST, PUT, PATCH or DELETE without a bearer token) must

- come from the gateway's own origin: an ``Origin`` (or, lacking it, ``Referer``) header
  naming another site is refused, and
- carry the session's CSRF token, a random value kept in the signed session cookie: in
  the ``csrf_token`` form field or the ``X-CSRF-Token`` header.

Templates put the token into a form with ``{{ csrf_field() }}``; ``static/app.js`` adds
it to any POST form that lacks it (rows pushed over SSE are shared by every browser, so
they cannot hold one session's token) and to every htmx request's headers, reading it
from the page's ``<meta name="csrf-token">``.  A request with ``Authorization: Bearer``
is exempt: another site's page cannot make a browser send that header without a CORS
preflight, which the gateway does not grant; nor is an API call that carries no session
cookie (the API takes bearer tokens only, so it answers 401).
"""
from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from jinja2 import pass_context
from markupsafe import Markup

from .auth import SESSION_COOKIE

SESSION_KEY = "csrf"
FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class CsrfRefused(Exception):
    """A state-changing request that may have been made by another site's page."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def csrf_token(request: Request) -> str:
    """The session's token, made on first use."""
    token = request.session.get(SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[SESSION_KEY] = token
    return token


@pass_context
def csrf_token_global(context: Any) -> str:
    request = context.get("request")
    return csrf_token(request) if request is not None else ""


@pass_context
def csrf_field_global(context: Any) -> Markup:
    request = context.get("request")
    if request is None:  # a fragment shared by many browsers: app.js adds the field
        return Markup("")
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        FORM_FIELD, csrf_token(request))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origin(request: Request) -> str:
    """The gateway's origin as the browser sees it: the Host the request names, over
    HTTPS when LABFLEET_HTTPS says a TLS proxy stands in front (a proxy that does not
    pass ``X-Forwarded-Proto`` would otherwise make every form look cross-site)."""
    url = request.url
    https = url.scheme == "https" or request.app.state.gateway.settings.https
    return f"{'https' if https else url.scheme}://{url.netloc}".lower()


def _check_origin(request: Request) -> None:
    own = own_origin(request)
    origin = request.headers.get("origin")
    if origin is not None:
        if origin.lower() != own:
            raise CsrfRefused(f"refused: this request was sent by a page of another site "
                              f"({origin}), not by the gateway's own pages ({own})",
                              hint=f"open {own} and use its forms")
        return
    referer = request.headers.get("referer")
    if referer and _origin(referer) != own:
        raise CsrfRefused(f"refused: this request came from a page of another site "
                          f"({_origin(referer)}), not from the gateway's own pages ({own})",
                          hint=f"open {own} and use its forms")


async def _sent_token(request: Request) -> str | None:
    sent = request.headers.get(HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(FORM_TYPES):
        value = (await request.form()).get(FORM_FIELD)
        sent = value if isinstance(value, str) else None
    return sent


async def verify_csrf(request: Request) -> None:
    """An app-wide dependency: raises :class:`CsrfRefused` for a forged request."""
    if request.method not in UNSAFE_METHODS:
        return
    scheme, _, _ = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return
    if request.url.path.startswith("/api/") and SESSION_COOKIE not in request.cookies:
        return
    _check_origin(request)
    expected = request.session.get(SESSION_KEY)
    sent = await _sent_token(request)
    if not sent:
        raise CsrfRefused("refused: the form carries no security token (CSRF token), so "
                          "it may have been sent by another site's page",
                          hint="reload the page and send the form again")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(),
                                                                expected.encode()):
        raise CsrfRefused("refused: the form's security token (CSRF token) does not match "
                          "this browser session; the page may be older than the last log-in",
                          hint="reload the page and send the form again")
