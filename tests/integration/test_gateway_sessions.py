"""Browser sessions over plain HTTP: cookie flags, logout ends the session for good, no
open redirect after login, and the API accepts only bearer tokens."""
from __future__ import annotations

import pytest

from .test_gateway_support import RunningGateway, csrf_from_form, gateway  # noqa: F401

pytestmark = pytest.mark.integration


async def test_login_logout_and_cookie_rules(gateway: RunningGateway) -> None:
    async with gateway.anonymous() as http:
        page = await http.get("/builds", headers={"Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fbuilds"
        login_page = await http.get("/login")
        refused = await http.post("/login", data={"username": "admin", "password": "no",
                                                  "next": "/",
                                                  "csrf_token": csrf_from_form(login_page.text)})
        assert refused.status_code == 401 and "Wrong user name or password" in refused.text
        ok = await http.post("/login", data={"username": "admin",
                                             "password": gateway.admin_password,
                                             "next": "//evil.example/x",
                                             "csrf_token": csrf_from_form(refused.text)})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert gateway.admin_password.lower() not in cookie
        stolen = dict(http.cookies)
        assert (await http.get("/tokens-page-does-not-exist")).status_code == 404
        assert (await http.get("/asyncapi")).status_code == 200
        # a session cookie is not an API credential
        api = await http.get("/api/v1/tokens")
        assert api.status_code == 401
        # a logged-in page's log-out form carries the new session's token
        with_form = await http.get("/builds")
        out = await http.post("/logout", data={"csrf_token": csrf_from_form(with_form.text)})
        assert out.status_code == 303
    # the old cookie no longer opens pages: the session row is gone, not just the cookie
    async with gateway.anonymous() as replay:
        replay.cookies.update(stolen)
        again = await replay.get("/build-servers")
        assert again.status_code == 303 and again.headers["location"].startswith("/login")
