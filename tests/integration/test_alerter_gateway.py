"""The gateway's alert parts against the real alerter: API, the live page, the badge, healthz."""
from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from labfleet.shared.events.health import HealthChanged, HealthStatus
from labfleet.shared.events.resource import ResourceKind

from .test_alerter import alerter, publish, smtp  # noqa: F401
from .test_gateway_support import (  # noqa: F401 - gateway is the shared fixture
    RunningGateway,
    browser_log_in,
    csrf_from_form,
    gateway,
)

pytestmark = pytest.mark.integration


async def test_alert_api_page_stream_badge_and_healthz(
        gateway: RunningGateway, alerter: Any, unique: str) -> None:  # noqa: F811
    async with gateway.client() as api:
        secret = f"gateway-secret-{unique}"
        target = await api.post("/api/v1/alert-targets", json={
            "name": f"hook-{unique}", "kind": "webhook", "url": "http://127.0.0.1:9/hook",
            "secret": secret})
        assert target.status_code == 201, target.text
        assert secret not in target.text and target.json()["has_secret"] is True
        listed = await api.get("/api/v1/alert-targets")
        assert secret not in listed.text and f"hook-{unique}" in listed.text

        short = await api.post("/api/v1/alert-targets", json={
            "name": f"short-{unique}", "kind": "webhook", "url": "http://127.0.0.1:9/h",
            "secret": "abc"})
        assert short.status_code == 422
        assert short.json()["error"]["code"] == "secret_too_short"
        assert short.json()["error"]["field"] == "secret"

        unknown = await api.post("/api/v1/alert-rules", json={
            "name": f"rule-{unique}", "targets": [f"missing-{unique}"]})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_target"
        rule = await api.post("/api/v1/alert-rules", json={
            "name": f"rule-{unique}", "conditions": ["host_unreachable"],
            "min_severity": "warning", "labels": {"team": unique},
            "targets": [f"hook-{unique}"]})
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["rule_id"]
        changed = await api.put(f"/api/v1/alert-rules/{rule_id}", json={
            "name": f"rule-{unique}", "conditions": ["host_unreachable"], "enabled": False})
        assert changed.status_code == 200 and changed.json()["enabled"] is False
        rules = (await api.get("/api/v1/alert-rules")).json()
        assert {"hosts unreachable", f"rule-{unique}"} <= {r["name"] for r in rules}
        assert (await api.delete(f"/api/v1/alert-rules/{rule_id}")).status_code == 204
        gone = await api.delete(f"/api/v1/alert-rules/{rule_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "rule_not_found"

        health = await api.get("/healthz")
        services = health.json()["services"]
        assert services["alerter"]["status"] == "up", health.text

    # a browser session: the page, the badge, and a live row over SSE
    async with gateway.anonymous() as browser:
        login = await browser_log_in(browser, "admin", gateway.admin_password)
        assert login.status_code == 303
        seen: list[str] = []
        resource_id = uuid.uuid4()

        async def listen() -> None:
            async with browser.stream("GET", "/alerts/stream") as response:
                async for line in response.aiter_lines():
                    seen.append(line)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.5)
        await publish(gateway.nc, HealthChanged(
            resource_id=resource_id, kind=ResourceKind.QEMU_HOST, status=HealthStatus.OFFLINE,
            previous=HealthStatus.ONLINE, reason="no route to host", last_seen=datetime.now(UTC)))
        for _ in range(100):
            if any(str(resource_id)[:8] in line for line in seen):
                break
            await asyncio.sleep(0.1)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        assert "event: alert-new" in seen, seen[:20]
        assert any(str(resource_id)[:8] in line and "unreachable" in line for line in seen)

        page = await browser.get("/alerts")
        assert page.status_code == 200 and "unreachable" in page.text
        assert "Acknowledge" in page.text
        # the page's rows carry the session's token (the stream's rows get it from app.js)
        token = csrf_from_form(page.text)
        assert f'/acknowledge"><input type="hidden" name="csrf_token" value="{token}">' in page.text
        badge = await browser.get("/alerts/badge")
        assert 'class="badge"' in badge.text and int(badge.text.split(">")[1].split("<")[0]) >= 1

    async with gateway.client() as api:
        alerts = (await api.get("/api/v1/alerts", params={"status": "open"})).json()
        mine = next(a for a in alerts if a["subject_id"] == str(resource_id))
        ack = await api.post(f"/api/v1/alerts/{mine['alert_id']}/acknowledge")
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
        assert ack.json()["acknowledged_by"] == "admin"
        detail = await api.get(f"/api/v1/alerts/{mine['alert_id']}")
        assert detail.json()["alert"]["status"] == "acknowledged"
        missing = await api.post(f"/api/v1/alerts/{uuid.uuid4()}/acknowledge")
        assert missing.status_code == 404
        assert json.loads(missing.text)["error"]["code"] == "alert_not_found"
