"""The health state machine over sequences of poll outcomes (no I/O)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from labfleet.monitor.domain.health import (
    HealthPolicy,
    HealthState,
    PollFailed,
    PollOutcome,
    PollSucceeded,
    judge,
    worth_saving,
)
from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import ResourceKind

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = HealthPolicy(offline_after_failures=2, disk_warning_gb=10.0)
RID = uuid.uuid4()


def ok(i: int, disk_free_gb: float = 50.0) -> PollSucceeded:
    return PollSucceeded(HostSample(
        resource_id=RID, kind=ResourceKind.BUILD_SERVER, at=T0 + timedelta(seconds=i),
        cpu_pct=10, load1=0.5, cpu_cores=4, mem_total_mb=8000, mem_used_mb=1000,
        disk_total_gb=100, disk_free_gb=disk_free_gb))


def failed(i: int) -> PollFailed:
    return PollFailed(at=T0 + timedelta(seconds=i), code="connection_refused",
                      message="127.0.0.1:22 refused the connection")


def run(outcomes: list[PollOutcome], policy: HealthPolicy = POLICY,
        state: HealthState | None = None) -> list[HealthState]:
    states = [state or HealthState()]
    for outcome in outcomes:
        states.append(judge(states[-1], outcome, policy))
    return states[1:]


def test_online_then_offline_after_the_bound_then_back() -> None:
    s = run([ok(0), failed(1), failed(2), failed(3), ok(4)])
    assert [x.status for x in s] == [HealthStatus.ONLINE, HealthStatus.ONLINE,
                                     HealthStatus.OFFLINE, HealthStatus.OFFLINE,
                                     HealthStatus.ONLINE]
    assert s[2].last_seen == T0 and s[2].last_sample == ok(0).sample  # last known, kept
    assert s[2].since == T0 + timedelta(seconds=2)
    assert "2 polls failed in a row" in s[2].reason and "(connection_refused)" in s[2].reason
    assert s[4].consecutive_failures == 0 and s[4].since == T0 + timedelta(seconds=4)


def test_a_host_never_seen_goes_from_unknown_to_offline() -> None:
    s = run([failed(0), failed(1)])
    assert s[0].status is HealthStatus.UNKNOWN and "refused" in s[0].reason
    assert s[1].status is HealthStatus.OFFLINE and s[1].last_seen is None


def test_low_disk_is_degraded_with_a_warning_and_recovers() -> None:
    s = run([ok(0), ok(1, disk_free_gb=3.25), ok(2, disk_free_gb=30)])
    assert s[1].status is HealthStatus.DEGRADED
    assert s[1].warnings == ("disk_low: 3.2 GB free in the work area, under the 10 GB threshold",)
    assert s[2].status is HealthStatus.ONLINE and s[2].warnings == ()


def test_maintenance_wins_over_polls() -> None:
    state = judge(HealthState(), ok(0), POLICY, in_maintenance=True)
    assert state.status is HealthStatus.MAINTENANCE
    assert judge(state, failed(1), POLICY, in_maintenance=True).status is HealthStatus.MAINTENANCE


def test_only_visible_changes_are_worth_saving() -> None:
    a, b = run([ok(0), ok(1)])
    assert not worth_saving(a, b)  # only last_seen moved
    c = judge(b, failed(2), POLICY)
    assert worth_saving(b, c)  # a missed poll shows


outcomes = st.lists(st.booleans(), min_size=1, max_size=40)


@given(seq=outcomes, bound=st.integers(min_value=1, max_value=5))
def test_offline_exactly_after_bound_failures_in_a_row(seq: list[bool], bound: int) -> None:
    policy = HealthPolicy(offline_after_failures=bound, disk_warning_gb=10.0)
    states = run([ok(i) if good else failed(i) for i, good in enumerate(seq)], policy)
    for i, state in enumerate(states):
        streak = 0
        for good in reversed(seq[: i + 1]):
            if good:
                break
            streak += 1
        assert state.consecutive_failures == streak
        assert (state.status is HealthStatus.OFFLINE) == (streak >= bound)
        if seq[i]:
            assert state.status is HealthStatus.ONLINE and state.last_seen == T0 + timedelta(seconds=i)
        last_good = max((j for j in range(i + 1) if seq[j]), default=None)
        assert state.last_seen == (None if last_good is None else T0 + timedelta(seconds=last_good))
