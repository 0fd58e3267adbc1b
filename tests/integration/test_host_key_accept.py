"""A build server whose host key is swapped, against the real inventory, monitor, gateway
and sshd: the monitor reports the changed key at its next poll, the API, the CLI and the
page show both fingerprints, a wrong fingerprint is refused (409) and the right one
accepted with an audit row, after which the monitor sees the host online again."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from labfleet.shared.ssh import fingerprint

from tests.sshd import Sshd, start_sshd

from .test_cli import labfleet_async
from .test_gateway_support import (  # noqa: F401
    RunningGateway,
    browser_log_in,
    csrf_from_form,
    gateway,
)
from .test_inventory import plain_dsn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL_S = 0.5


@pytest.fixture
def own_sshd(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_dsn(database_url))
    yield conn
    await conn.close()


async def health_of(api: Any, server_id: str) -> dict:
    detail = (await api.get(f"/api/v1/build-servers/{server_id}")).json()
    return {"status": detail.get("status"),
            "reason": (detail.get("health") or {}).get("reason", "")}


async def wait_for(api: Any, server_id: str, want: Any, limit_s: float) -> tuple[float, dict]:
    started = time.monotonic()
    health: dict = {}
    while time.monotonic() - started < limit_s:
        health = await health_of(api, server_id)
        if want(health):
            return time.monotonic() - started, health
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {limit_s} s: {health}")


async def test_a_swapped_key_is_reported_checked_and_accepted(
        gateway: RunningGateway, settings_factory, own_sshd: Sshd, unique: str,  # type: ignore[no-untyped-def]
        pg: asyncpg.Connection) -> None:
    from cryptography.fernet import Fernet
    from labfleet.inventory.main import create as create_inventory
    from labfleet.monitor.main import create as create_monitor

    settings = settings_factory(credential_key=Fernet.generate_key().decode(),
                                monitor_interval_s=INTERVAL_S)
    inventory, monitor = create_inventory(settings), create_monitor(settings)
    await inventory.start()
    await monitor.start()
    env = {"LABFLEET_URL": gateway.base_url, "LABFLEET_TOKEN": gateway.admin_token}
    old_fp = fingerprint(own_sshd.host_key)
    try:
        async with gateway.client() as api:
            r = await api.post("/api/v1/build-servers", json={
                "hostname": f"hk-{unique}", "address": own_sshd.host,
                "ssh_port": own_sshd.port, "username": own_sshd.username,
                "private_key": own_sshd.private_key, "architectures": ["x86_64"]})
            assert r.status_code == 201, r.text
            server_id = r.json()["id"]
            await wait_for(api, server_id, lambda h: h["status"] in ("online", "degraded"), 30)
            same = (await api.get(f"/api/v1/resources/{server_id}/host-key")).json()
            assert same["matches"] is True and same["pinned_fingerprint"] == old_fp

            new_key = await asyncio.to_thread(own_sshd.swap_host_key)
            new_fp = fingerprint(new_key)
            took, health = await wait_for(api, server_id,
                                          lambda h: h["status"] == "offline", 10)
            print(f"\nswapped host key reported by the monitor after {took:.2f} s "
                  f"(poll every {INTERVAL_S:g} s)")
            assert took <= INTERVAL_S + 2.0  # one poll, its handshake, the event to the gateway
            assert health["reason"].startswith("host_key_changed")
            assert old_fp in health["reason"] and new_fp in health["reason"]

            check = await api.get(f"/api/v1/resources/{server_id}/host-key")
            assert check.status_code == 200, check.text
            k = check.json()
            assert (k["pinned_fingerprint"], k["presented_fingerprint"], k["matches"]) == \
                (old_fp, new_fp, False)

            # the CLI shows both and says what to run; exit 2 while they differ
            code, out = await labfleet_async("resource", "host-key", f"hk-{unique}", env=env)
            assert code == 2, out
            assert old_fp in out and new_fp in out and "accept-host-key" in out
            code, out = await labfleet_async("resource", "list", env=env)
            assert code == 0 and f"hk-{unique}" in out and old_fp in out, out

            # a fingerprint that is not the one presented: 409, nothing changed
            wrong = await api.post(f"/api/v1/resources/{server_id}/host-key/accept",
                                   json={"fingerprint": old_fp})
            assert wrong.status_code == 409, wrong.text
            err = wrong.json()["error"]
            assert err["code"] == "host_key_conflict" and err["field"] == "fingerprint"
            assert new_fp in err["message"] and "nothing was changed" in err["message"]
            malformed = await api.post(f"/api/v1/resources/{server_id}/host-key/accept",
                                       json={"fingerprint": "SHA256:short"})
            assert malformed.status_code == 422, malformed.text
            assert malformed.json()["error"]["code"] == "invalid_fingerprint"
            missing = await api.post(f"/api/v1/resources/{server_id}/host-key/accept", json={})
            assert missing.status_code == 422 and missing.json()["error"]["field"] == "fingerprint"
            assert (await api.get(f"/api/v1/resources/{server_id}/host-key")).json()[
                "pinned_fingerprint"] == old_fp

            # the page, reached from the server's page, shows both and an Accept form
            async with gateway.anonymous() as browser:
                assert (await browser_log_in(browser, "admin", gateway.admin_password)
                        ).status_code == 303
                server_page = await browser.get(f"/build-servers/{server_id}")
                assert f'href="/resources/{server_id}/host-key"' in server_page.text
                assert "Host key changed" in server_page.text
                page = await browser.get(f"/resources/{server_id}/host-key")
                assert page.status_code == 200
                assert old_fp in page.text and new_fp in page.text
                token = csrf_from_form(page.text)
                forged = await browser.post(f"/resources/{server_id}/host-key/accept",
                                            data={"fingerprint": new_fp})
                assert forged.status_code == 403  # no CSRF token: refused
                # the CLI accepts exactly what was shown
                code, out = await labfleet_async("resource", "accept-host-key", server_id,
                                                 "--fingerprint", new_fp, env=env)
                assert code == 0, out
                assert f"{new_fp} accepted (was {old_fp})" in out
                after = await browser.get(f"/resources/{server_id}/host-key")
                assert "/host-key/accept" not in after.text  # nothing left to accept
                assert new_fp in after.text and old_fp not in after.text
                assert token  # the form carried the session's token

            row = await pg.fetchrow(
                "SELECT actor, result, detail::text AS detail FROM inventory.audit_log "
                "WHERE resource_id = $1 AND action = 'accept_host_key' AND result = 'ok'",
                server_id)
            assert row is not None
            detail = json.loads(row["detail"])
            assert row["actor"] == "admin"
            assert (detail["old_fingerprint"], detail["new_fingerprint"]) == (old_fp, new_fp)
            refused = await pg.fetchval(
                "SELECT count(*) FROM inventory.audit_log WHERE resource_id = $1 AND "
                "action = 'accept_host_key' AND result = 'host_key_conflict'", server_id)
            assert refused == 1

            # the monitor logs in with the new pin and finds the host online again
            took, _ = await wait_for(api, server_id,
                                     lambda h: h["status"] in ("online", "degraded"), 15)
            print(f"host online again {took:.2f} s after the accept")
            assert (await api.get(f"/api/v1/resources/{server_id}/host-key")).json()[
                "matches"] is True
            await api.delete(f"/api/v1/build-servers/{server_id}", params={"force": "true"})
    finally:
        await monitor.stop()
        await inventory.stop()

