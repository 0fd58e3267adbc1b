"""The alerter against real NATS and PostgreSQL, a real SMTP server and a real HTTP receiver.

Health and build events are published on JetStream exactly as the monitor and the builder
publish them.  Each test uses its own resources, labels, rules and targets, so the
session-wide alerter schema may hold others' alerts without confusing it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from labfleet.alerter.config import AlerterConfig, SmtpConfig
from labfleet.alerter.domain.notifications import SIGNATURE_HEADER, verify
from labfleet.alerter.main import create as create_alerter
from labfleet.embedded.ports import free_port
from labfleet.shared.bus import reveal_secrets_json
from labfleet.shared.events.alert import (
    AcknowledgeAlert,
    AlertReply,
    AlertView,
    GetAlert,
    RuleReply,
    RuleSpec,
    SaveAlertRule,
    SaveAlertTarget,
    TargetKind,
    TargetReply,
    TargetSpec,
)
from labfleet.shared.events.build import BuildFailed, BuildRejected, BuildSucceeded
from labfleet.shared.events.envelope import ErrorInfo, Event
from labfleet.shared.events.health import HealthChanged, HealthStatus
from labfleet.shared.events.resource import ResourceKind, ResourceRegistered, ResourceView, SshTarget
from labfleet.shared.service import Service
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

pytestmark = pytest.mark.integration

CREDENTIAL_KEY = Fernet.generate_key().decode()


# ---- real peers --------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode("utf-8",
                                                                                 "replace")))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()


class Receiver:
    """A real HTTP server on 127.0.0.1 that keeps each webhook POST it gets."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_config=None, lifespan="off"))
        self.task: asyncio.Task[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def hook(self, request: Request) -> Response:
        self.posts.append((dict(request.headers), await request.body()))
        self.arrived.set()
        return Response(status_code=204)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float
                       ) -> tuple[dict[str, str], bytes] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in self.posts:
                if predicate(json.loads(body)):
                    return headers, body
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.2)
        return None


class AlertEvents:
    """Every ``alert.*`` message seen on core NATS, with its arrival time."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, AlertView]] = []

    async def on_msg(self, msg: Any) -> None:
        data = json.loads(msg.data)
        self.items.append((time.monotonic(), msg.subject, AlertView.model_validate(data["alert"])))

    def of(self, subject_id: uuid.UUID, subject: str | None = None
           ) -> list[tuple[float, str, AlertView]]:
        return [i for i in self.items if i[2].subject_id == subject_id
                and (subject is None or i[1] == subject)]

    async def wait(self, subject_id: uuid.UUID, subject: str, timeout: float, n: int = 1
                   ) -> list[tuple[float, str, AlertView]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.of(subject_id, subject)) < n:
            await asyncio.sleep(0.02)
        return self.of(subject_id, subject)


# ---- the alerter and its helpers ---------------------------------------------------------


@pytest.fixture(scope="module")
async def alerter(nats_url: str, database_url: str, smtp: Any, tmp_path_factory: Any
                  ) -> AsyncIterator[Service]:
    from labfleet.shared.settings import Settings

    controller, _ = smtp
    settings = Settings(nats_url=nats_url, database_url=database_url, log_json=False,
                        data_dir=tmp_path_factory.mktemp("alerter"), max_deliver=3,
                        redelivery_backoff_s=[0.1, 0.2, 0.3], credential_key=CREDENTIAL_KEY)
    config = AlerterConfig(delivery_backoff_s=[0.3, 0.6, 1.0], notify_interval_s=0.0,
                           poll_s=0.2, max_delivery_attempts=20,
                           dashboard_url="http://127.0.0.1/alerts")
    svc = create_alerter(settings, config,
                         SmtpConfig(host=controller.hostname, port=controller.port,
                                    sender="alerts@lab.test"))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def events(nc: Any) -> AlertEvents:
    collected = AlertEvents()
    await nc.subscribe("alert.*", cb=collected.on_msg)
    return collected


async def publish(nc: Any, event: Event) -> None:
    js = nc.jetstream()
    await js.publish(event.subject, event.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": str(event.event_id)})


async def ask(nc: Any, command: Any, reply_type: Any) -> Any:
    msg = await nc.request(command.subject, reveal_secrets_json(command).encode(), timeout=10)
    return reply_type.model_validate_json(msg.data)


async def register_resource(nc: Any, name: str, labels: dict[str, str]) -> ResourceView:
    view = ResourceView(resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=name,
                        ssh=SshTarget(address="127.0.0.1", username="build"), labels=labels)
    await publish(nc, ResourceRegistered(resource=view))
    await asyncio.sleep(1.0)  # the projection is a consumer of its own, like any other
    return view


async def make_targets_and_rule(nc: Any, unique: str, webhook_url: str, secret: str,
                                conditions: list[str]) -> RuleReply:
    hook = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"hook-{unique}", kind=TargetKind.WEBHOOK, url=webhook_url,
        secret=SecretStr(secret))), TargetReply)
    assert hook.ok, hook.error
    mail = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"mail-{unique}", kind=TargetKind.EMAIL, addresses=[f"ops-{unique}@lab.test"])),
        TargetReply)
    assert mail.ok, mail.error
    rule = await ask(nc, SaveAlertRule(rule=RuleSpec(
        name=f"team {unique}", conditions=conditions, labels={"team": unique},
        targets=[f"hook-{unique}", f"mail-{unique}"])), RuleReply)
    assert rule.ok, rule.error
    return rule


def health(resource: ResourceView, status: HealthStatus, previous: HealthStatus,
           reason: str = "", warnings: list[str] | None = None) -> HealthChanged:
    return HealthChanged(resource_id=resource.resource_id, kind=resource.kind, status=status,
                         previous=previous, reason=reason, warnings=warnings or [],
                         last_seen=datetime.now(UTC))


# ---- tests -------------------------------------------------------------------------------


async def test_offline_alerts_within_30s_by_email_and_signed_webhook_dedupes_and_resolves(
        alerter: Service, nc: Any, events: AlertEvents, smtp: Any, unique: str) -> None:
    _, mailbox = smtp
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        secret = f"s3cret-{unique}-0123456789"
        rule = await make_targets_and_rule(nc, unique, receiver.url, secret,
                                           ["host_unreachable", "host_key_changed"])
        assert secret not in rule.model_dump_json()
        server = await register_resource(nc, f"build-{unique}", {"team": unique})
        reason = "2 polls failed in a row; last (connect_timeout): no answer within 10 s"

        sent = time.monotonic()
        await publish(nc, health(server, HealthStatus.OFFLINE, HealthStatus.ONLINE, reason))
        raised = await events.wait(server.resource_id, "alert.raised", 30, n=2)
        ours = [a for _, _, a in raised if a.rule_id == rule.rule.rule_id]  # type: ignore[union-attr]
        assert ours, f"no alert.raised of rule {rule.rule} within 30 s: {events.items}"
        latency = next(t for t, _, a in raised if a.rule_id == ours[0].rule_id) - sent
        print(f"\n[alerter] health.changed → alert.raised: {latency * 1000:.0f} ms")
        assert latency < 30.0
        alert = ours[0]
        assert alert.severity.value == "critical" and alert.condition.value == "host_unreachable"
        assert alert.title == f"build-{unique} is unreachable" and alert.detail == reason
        # the default rule shows it on the dashboard as well
        assert any(a.rule_name == "hosts unreachable" for _, _, a in raised)

        # the same condition again (a monitor restart, a second replica): counted, not new
        await publish(nc, health(server, HealthStatus.OFFLINE, HealthStatus.UNKNOWN, reason))
        repeated = await events.wait(server.resource_id, "alert.repeated", 10, n=2)
        again = [a for _, _, a in repeated if a.alert_id == alert.alert_id]
        assert again and again[-1].count == 2
        assert len([a for _, _, a in events.of(server.resource_id, "alert.raised")
                    if a.rule_id == alert.rule_id]) == 1

        # the webhook: one POST for the raise, signed with the target's secret
        got = await receiver.wait_for(lambda b: b["alert"]["alert_id"] == str(alert.alert_id)
                                      and b["event"] == "raised", 15)
        assert got is not None, "the webhook never received the raised alert"
        headers, body = got
        assert verify(secret, body, headers[SIGNATURE_HEADER.lower()])
        assert not verify("another secret of enough length", body,
                          headers[SIGNATURE_HEADER.lower()])
        assert secret.encode() not in body

        # the email, through the real SMTP server
        deadline = time.monotonic() + 15
        mails: list[str] = []
        while time.monotonic() < deadline and not mails:
            mails = [m for rcpt, m in mailbox.messages if f"ops-{unique}@lab.test" in rcpt]
            await asyncio.sleep(0.1)
        assert mails, "no email arrived at the SMTP server"
        assert f"Subject: [labfleet CRITICAL] build-{unique} is unreachable" in mails[0]
        assert reason in mails[0] and "http://127.0.0.1/alerts" in mails[0]

        # the host answers again: resolved by itself, and both targets hear of it
        await publish(nc, health(server, HealthStatus.ONLINE, HealthStatus.OFFLINE,
                                 "answering polls"))
        resolved = await events.wait(server.resource_id, "alert.resolved", 10, n=2)
        mine = [a for _, _, a in resolved if a.alert_id == alert.alert_id]
        assert mine and mine[0].resolution == f"build-{unique} is online again"
        assert await receiver.wait_for(
            lambda b: b["alert"]["alert_id"] == str(alert.alert_id) and b["event"] == "resolved",
            15) is not None
        raised_posts = [b for _, b in receiver.posts
                        if json.loads(b)["alert"]["alert_id"] == str(alert.alert_id)
                        and json.loads(b)["event"] == "raised"]
        assert len(raised_posts) == 1, "a repeated raise must not notify again"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(
                [m for rcpt, m in mailbox.messages if f"ops-{unique}@lab.test" in rcpt]) < 2:
            await asyncio.sleep(0.1)
        mails = [m for rcpt, m in mailbox.messages if f"ops-{unique}@lab.test" in rcpt]
        assert any(f"[labfleet RESOLVED] build-{unique} is unreachable" in m for m in mails)

        detail = await ask(nc, GetAlert(alert_id=alert.alert_id), AlertReply)
        assert detail.alert.status.value == "resolved"
        statuses = {(d.kind.value, d.event): d.status for d in detail.deliveries}
        assert statuses == {("webhook", "raised"): "delivered", ("email", "raised"): "delivered",
                            ("webhook", "resolved"): "delivered",
                            ("email", "resolved"): "delivered"}, detail.deliveries
    finally:
        await receiver.stop()


async def test_webhook_down_first_is_retried_until_it_is_up(
        alerter: Service, nc: Any, events: AlertEvents, unique: str) -> None:
    port = free_port()
    receiver = Receiver(port)
    secret = f"hook-secret-{unique}"
    await make_targets_and_rule(nc, unique, receiver.url, secret, ["build_failed"])
    server = await register_resource(nc, f"build-{unique}", {"team": unique})
    build_id = uuid.uuid4()
    await publish(nc, BuildFailed(build_id=build_id, server_id=server.resource_id,
                                  error=ErrorInfo(code="host_unreachable",
                                                  message="the build server stopped answering"),
                                  retryable=True, attempt=1))
    raised = await events.wait(build_id, "alert.raised", 15, n=2)
    alert = next(a for _, _, a in raised if a.rule_name == f"team {unique}")
    assert alert.severity.value == "warning"
    assert "recovery is being attempted on another server" in alert.detail
    assert alert.resource_name is None or alert.resource_id == server.resource_id

    # nothing listens yet: attempts pile up, each recorded with its error
    deadline = time.monotonic() + 10
    hook: Any = None
    while time.monotonic() < deadline:
        detail = await ask(nc, GetAlert(alert_id=alert.alert_id), AlertReply)
        hook = next((d for d in detail.deliveries if d.kind.value == "webhook"), None)
        if hook is not None and hook.attempts >= 2:
            break
        await asyncio.sleep(0.2)
    assert hook is not None and hook.attempts >= 2 and hook.status == "pending", hook
    assert "ConnectError" in (hook.last_error or ""), hook.last_error

    await receiver.start()
    try:
        got = await receiver.wait_for(lambda b: b["alert"]["alert_id"] == str(alert.alert_id),
                                      15)
        assert got is not None, "the webhook was not retried once the receiver was up"
        assert verify(secret, got[1], got[0][SIGNATURE_HEADER.lower()])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            detail = await ask(nc, GetAlert(alert_id=alert.alert_id), AlertReply)
            hook = next(d for d in detail.deliveries if d.kind.value == "webhook")
            if hook.status == "delivered":
                break
            await asyncio.sleep(0.1)
        assert hook.status == "delivered" and hook.attempts >= 3, hook

        # the retry on another server succeeds: the alert resolves itself
        await publish(nc, BuildSucceeded(build_id=build_id, server_id=uuid.uuid4(), commit="c0",
                                         duration_s=1.0, artifacts=[], attempt=2))
        resolved = await events.wait(build_id, "alert.resolved", 10, n=2)
        assert any(a.alert_id == alert.alert_id for _, _, a in resolved)
    finally:
        await receiver.stop()


async def test_disk_low_host_key_rejected_build_and_acknowledge(
        alerter: Service, nc: Any, events: AlertEvents, unique: str) -> None:
    server = await register_resource(nc, f"build-{unique}", {"team": unique})
    disk = "disk_low: 3.2 GB free in the work area, under the 10 GB threshold"
    await publish(nc, health(server, HealthStatus.DEGRADED, HealthStatus.ONLINE, disk, [disk]))
    raised = await events.wait(server.resource_id, "alert.raised", 15)
    assert raised and raised[0][2].condition.value == "disk_low"
    assert raised[0][2].severity.value == "warning" and disk in raised[0][2].detail
    await publish(nc, health(server, HealthStatus.ONLINE, HealthStatus.DEGRADED))
    resolved = await events.wait(server.resource_id, "alert.resolved", 10)
    assert resolved and resolved[0][2].condition.value == "disk_low"

    await publish(nc, health(server, HealthStatus.OFFLINE, HealthStatus.ONLINE,
                             "2 polls failed in a row; last (host_key_changed): the key "
                             "differs from the pinned one"))
    raised = await events.wait(server.resource_id, "alert.raised", 15, n=2)
    key = next(a for _, _, a in raised if a.condition.value == "host_key_changed")
    assert key.severity.value == "critical"

    ack = await ask(nc, AcknowledgeAlert(alert_id=key.alert_id, by="admin"), AlertReply)
    assert ack.ok and ack.alert.status.value == "acknowledged"
    assert ack.alert.acknowledged_by == "admin"
    assert (await events.wait(server.resource_id, "alert.acknowledged", 10))
    missing = await ask(nc, AcknowledgeAlert(alert_id=uuid.uuid4()), AlertReply)
    assert not missing.ok and missing.error.code == "alert_not_found"

    build_id = uuid.uuid4()
    await publish(nc, BuildRejected(build_id=build_id, error=ErrorInfo(
        code="retries_exhausted", message="3 attempts failed; no server left to try")))
    rejected = await events.wait(build_id, "alert.raised", 15)
    assert rejected and rejected[0][2].severity.value == "critical"
    assert "no server left" in rejected[0][2].detail


async def test_rules_and_targets_refuse_bad_input_and_never_show_secrets(
        alerter: Service, nc: Any, unique: str) -> None:
    bad_rule = await ask(nc, SaveAlertRule(rule=RuleSpec(
        name=f"r-{unique}", targets=[f"nope-{unique}"])), RuleReply)
    assert not bad_rule.ok and bad_rule.error.code == "unknown_target"
    assert bad_rule.error.field == "targets"
    kind = await ask(nc, SaveAlertRule(rule=RuleSpec(name=f"r-{unique}", resource_kind="toaster")),
                     RuleReply)
    assert not kind.ok and kind.error.code == "invalid_resource_kind"
    url = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"t-{unique}", kind=TargetKind.WEBHOOK, url="ftp://x", secret=SecretStr("x" * 20))),
        TargetReply)
    assert not url.ok and url.error.code == "invalid_url"
    short = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"t-{unique}", kind=TargetKind.WEBHOOK, url="http://127.0.0.1:9/h",
        secret=SecretStr("short"))), TargetReply)
    assert not short.ok and short.error.code == "secret_too_short"
    mail = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"t-{unique}", kind=TargetKind.EMAIL, addresses=["not an address"])), TargetReply)
    assert not mail.ok and mail.error.code == "invalid_addresses"

    secret = f"very-secret-{unique}"
    ok = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"t-{unique}", kind=TargetKind.WEBHOOK, url="http://127.0.0.1:9/h",
        secret=SecretStr(secret))), TargetReply)
    assert ok.ok and ok.target.has_secret and secret not in ok.model_dump_json()
    stored = await alerter.db.fetchval(  # type: ignore[union-attr]
        "SELECT secret FROM targets WHERE target_id = $1", ok.target.target_id)
    assert secret.encode() not in bytes(stored), "the secret must be encrypted at rest"
    dup = await ask(nc, SaveAlertTarget(target=TargetSpec(
        name=f"t-{unique}", kind=TargetKind.EMAIL, addresses=["a@b.c"])), TargetReply)
    assert not dup.ok and dup.error.code == "target_name_taken"


async def test_cli_lists_rules_and_alerts_and_acknowledges(
        alerter: Service, nc: Any, events: AlertEvents, nats_url: str, unique: str) -> None:
    import os
    import sys

    server = await register_resource(nc, f"cli-{unique}", {})
    await publish(nc, health(server, HealthStatus.OFFLINE, HealthStatus.ONLINE, "link down"))
    raised = await events.wait(server.resource_id, "alert.raised", 15)
    assert raised
    env = {**os.environ, "LABFLEET_NATS_URL": nats_url}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labfleet.cli.main", "alert", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, out = await cli("list")
    assert code == 0 and f"cli-{unique} is unreachable" in out, out
    code, out = await cli("rules")
    assert code == 0 and "hosts unreachable" in out, out
    code, out = await cli("ack", str(raised[0][2].alert_id), "--by", "oncall")
    assert code == 0 and "acknowledged" in out, out
    code, out = await cli("ack", str(uuid.uuid4()))
    assert code == 1 and "there is no alert" in out, out
