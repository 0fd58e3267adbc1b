"""The alerter's pure rooms: events to signals, rule matching, signing, back-off, texts."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from labfleet.alerter.domain.delivery import gives_up, retry_delay
from labfleet.alerter.domain.notifications import email_body, email_subject, sign, verify
from labfleet.alerter.domain.rules import Rule, rule_matches
from labfleet.alerter.domain.signals import build_failed_signal, health_signals
from labfleet.shared.events.alert import (
    AlertCondition,
    AlertStatus,
    AlertView,
    Severity,
    SubjectType,
)
from labfleet.shared.events.build import BuildFailed
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HealthChanged, HealthStatus
from labfleet.shared.events.resource import ResourceKind

RID = uuid.uuid4()


def changed(status: HealthStatus, reason: str = "", warnings: list[str] | None = None
            ) -> HealthChanged:
    return HealthChanged(resource_id=RID, kind=ResourceKind.BUILD_SERVER, status=status,
                         previous=HealthStatus.ONLINE, reason=reason, warnings=warnings or [])


def test_offline_raises_a_critical_unreachable_alert_named_after_the_host() -> None:
    [signal] = health_signals(changed(HealthStatus.OFFLINE, "2 polls failed"), "build1")
    assert signal.raised and signal.condition is AlertCondition.HOST_UNREACHABLE
    assert signal.severity is Severity.CRITICAL and signal.title == "build1 is unreachable"
    assert signal.detail == "2 polls failed" and signal.resource_kind == "build_server"


def test_a_changed_host_key_is_its_own_critical_condition() -> None:
    [signal] = health_signals(changed(HealthStatus.OFFLINE,
                                      "last (host_key_changed): key differs"))
    assert signal.condition is AlertCondition.HOST_KEY_CHANGED
    assert signal.severity is Severity.CRITICAL


def test_degraded_with_low_disk_warns_and_clears_unreachability() -> None:
    warning = "disk_low: 2.0 GB free in the work area, under the 10 GB threshold"
    signals = health_signals(changed(HealthStatus.DEGRADED, warning, [warning]))
    raised = [s for s in signals if s.raised]
    assert [s.condition for s in raised] == [AlertCondition.DISK_LOW]
    assert raised[0].severity is Severity.WARNING and warning in raised[0].detail
    assert {s.condition for s in signals if not s.raised} == {
        AlertCondition.HOST_UNREACHABLE, AlertCondition.HOST_KEY_CHANGED}


def test_online_clears_everything_a_host_raises() -> None:
    signals = health_signals(changed(HealthStatus.ONLINE), "build1")
    assert not any(s.raised for s in signals)
    assert {s.condition for s in signals} == {AlertCondition.HOST_UNREACHABLE,
                                              AlertCondition.HOST_KEY_CHANGED,
                                              AlertCondition.DISK_LOW}
    assert all(s.resolution for s in signals)


def test_unknown_status_says_nothing() -> None:
    assert health_signals(changed(HealthStatus.UNKNOWN)) == []


def test_a_retryable_build_failure_says_recovery_is_attempted() -> None:
    event = BuildFailed(build_id=uuid.uuid4(), server_id=RID, retryable=True, attempt=2,
                        error=ErrorInfo(code="host_unreachable", message="server lost"))
    signal = build_failed_signal(event, "build1")
    assert signal.subject_type is SubjectType.BUILD and signal.subject_id == event.build_id
    assert "recovery is being attempted on another server" in signal.detail
    assert "on build1" in signal.title and signal.severity is Severity.WARNING
    plain = build_failed_signal(event.model_copy(update={"retryable": False}))
    assert "recovery" not in plain.detail


def test_rules_match_on_condition_severity_kind_and_labels() -> None:
    [signal] = health_signals(changed(HealthStatus.OFFLINE, "down"))
    base = Rule(rule_id=uuid.uuid4(), name="r")
    assert rule_matches(base, signal, {})
    assert not rule_matches(Rule(base.rule_id, "r", enabled=False), signal, {})
    assert not rule_matches(Rule(base.rule_id, "r", conditions=frozenset(
        {AlertCondition.DISK_LOW})), signal, {})
    assert rule_matches(Rule(base.rule_id, "r", min_severity=Severity.CRITICAL), signal, {})
    assert not rule_matches(Rule(base.rule_id, "r", resource_kind="board"), signal, {})
    team = Rule(base.rule_id, "r", labels={"team": "bsp"})
    assert rule_matches(team, signal, {"team": "bsp", "room": "2"})
    assert not rule_matches(team, signal, {"team": "kernel"})
    assert not rule_matches(team, signal, {})


@given(st.binary(), st.text(min_size=1))
def test_signatures_verify_only_with_the_same_secret_and_body(body: bytes, secret: str) -> None:
    signature = sign(secret, body)
    assert signature.startswith("sha256=") and verify(secret, body, signature)
    assert not verify(secret + "x", body, signature)
    assert not verify(secret, body + b"x", signature)


def test_back_off_follows_the_schedule_then_repeats_its_last_step() -> None:
    schedule = [1.0, 5.0, 30.0]
    assert [retry_delay(n, schedule) for n in (1, 2, 3, 4, 9)] == [1.0, 5.0, 30.0, 30.0, 30.0]
    assert not gives_up(9, 10) and gives_up(10, 10)


def test_email_says_what_where_and_how_often() -> None:
    now = datetime.now(UTC)
    alert = AlertView(alert_id=uuid.uuid4(), rule_id=uuid.uuid4(), rule_name="hosts unreachable",
                      condition=AlertCondition.HOST_UNREACHABLE, severity=Severity.CRITICAL,
                      status=AlertStatus.OPEN, subject_type=SubjectType.RESOURCE,
                      subject_id=RID, resource_id=RID, resource_kind="build_server",
                      resource_name="build1", title="build1 is unreachable",
                      detail="no route to host", count=3, first_raised_at=now,
                      last_raised_at=now)
    assert email_subject("raised", alert) == "[labfleet CRITICAL] build1 is unreachable"
    assert email_subject("resolved", alert) == "[labfleet RESOLVED] build1 is unreachable"
    body = email_body("raised", alert, "https://lab/alerts")
    assert "no route to host" in body and "(3 times)" in body and "https://lab/alerts" in body
    assert "build1 (build_server)" in body
