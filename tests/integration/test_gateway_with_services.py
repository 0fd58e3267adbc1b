"""The gateway in front of the real inventory and monitor services and a real sshd:
register a build server through the REST API, then see its live sample and health."""
from __future__ import annotations

import asyncio
import importlib.util

import pytest

from .test_gateway_support import RunningGateway, browser_log_in, gateway  # noqa: F401

pytestmark = pytest.mark.integration


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


async def test_register_through_the_api_then_watch_it_live(
        gateway: RunningGateway, settings_factory, sshd, unique) -> None:  # type: ignore[no-untyped-def]
    missing = _missing("labfleet.inventory.main", "labfleet.monitor.main")
    if missing:
        pytest.skip(f"needs the services {missing} (not in this checkout yet)")
    from cryptography.fernet import Fernet
    from labfleet.inventory.main import create as create_inventory
    from labfleet.monitor.main import create as create_monitor

    settings = settings_factory(credential_key=Fernet.generate_key().decode(),
                                monitor_interval_s=0.5)
    inventory, monitor = create_inventory(settings), create_monitor(settings)
    await inventory.start()
    await monitor.start()
    try:
        async with gateway.client() as api:
            wrong = await api.post("/api/v1/build-servers", json={
                "hostname": f"gw-{unique}", "address": sshd.host, "ssh_port": sshd.port,
                "username": sshd.username, "password": "not-the-password"})
            assert wrong.status_code == 422, wrong.text
            assert wrong.json()["error"]["code"] == "authentication_failed"
            r = await api.post("/api/v1/build-servers", json={
                "hostname": f"gw-{unique}", "address": sshd.host, "ssh_port": sshd.port,
                "username": sshd.username, "private_key": sshd.private_key,
                "architectures": ["x86_64"]})
            assert r.status_code == 201, r.text
            server_id = r.json()["id"]
            assert r.json()["ssh"]["host_key_fingerprint"].startswith("SHA256:")
            assert sshd.private_key not in r.text
            again = await api.post("/api/v1/build-servers", json={
                "hostname": f"gw-{unique}", "address": sshd.host, "ssh_port": sshd.port,
                "username": sshd.username, "private_key": sshd.private_key})
            assert again.status_code == 409, again.text
            detail: dict = {}
            for _ in range(60):
                detail = (await api.get(f"/api/v1/build-servers/{server_id}")).json()
                if detail.get("sample") and detail.get("status") != "unknown":
                    break
                await asyncio.sleep(0.25)
            assert detail["sample"]["cpu_cores"] > 0, detail
            assert detail["status"] in ("online", "degraded"), detail
            listed = await api.get("/api/v1/build-servers", params={"q": f"gw-{unique}"})
            assert [s["id"] for s in listed.json()["items"]] == [server_id]
            put = await api.post(f"/api/v1/build-servers/{server_id}/maintenance",
                                 json={"reason": "new disk"})
            assert put.status_code == 200, put.text
            assert put.json()["lifecycle"] == "maintenance"
            assert put.json()["maintenance"]["reason"] == "new disk"
            windows = (await api.get("/api/v1/build-servers/maintenance")).json()
            entry = next(w for w in windows["windows"] if w["server_id"] == server_id)
            assert entry["in_force"] and entry["cpu_cores"] == detail["capabilities"]["cpu_cores"]
            assert windows["cores_in_maintenance"] >= entry["cpu_cores"]
            async with gateway.anonymous() as browser:
                login = await browser_log_in(browser, "admin", gateway.admin_password)
                assert login.status_code == 303
                page = await browser.get(f"/build-servers/{server_id}")
                assert page.status_code == 200 and "In maintenance" in page.text
                windows_page = await browser.get("/maintenance")
                assert windows_page.status_code == 200 and f"gw-{unique}" in windows_page.text
            paused = await api.patch(f"/api/v1/build-servers/{server_id}/options",
                                     json={"pause_on_low_disk": True})
            assert paused.status_code == 200 and paused.json()["pause_on_low_disk"] is True
            bad = await api.post(f"/api/v1/build-servers/{server_id}/maintenance",
                                 json={"end": "2001-01-01T00:00:00Z"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_window"
            # no builder runs here to vouch that no build is active: decommission by force
            busy = await api.delete(f"/api/v1/build-servers/{server_id}")
            assert busy.status_code == 409, busy.text
            assert busy.json()["error"]["code"] == "active_builds_unknown"
            removed = await api.delete(f"/api/v1/build-servers/{server_id}",
                                       params={"force": "true"})
            assert removed.status_code == 204, removed.text
    finally:
        await monitor.stop()
        await inventory.stop()
