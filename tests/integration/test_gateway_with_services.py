"""The gateway in front of the real inventory and monitor services and a real sshd:
register a build server through the REST API, then see its live sample and health."""
from __future__ import annotations

import asyncio
import importlib.util

import pytest

from .test_gateway_support import RunningGateway, gateway  # noqa: F401

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
