"""The log-in throttle as a pure policy over a clock we move by hand."""
from __future__ import annotations

from labfleet.gateway.login_throttle import MAX_TRACKED, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock) -> LoginThrottle:
    return LoginThrottle(failures_per_user=3, failures_per_address=5, window_s=600,
                         first_lockout_s=30, clock=clock)


def test_a_user_is_locked_out_after_the_allowance_and_each_failure_doubles_the_wait() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(2):
        t.failed("alice", "10.0.0.1")
        assert t.retry_after("alice", "10.0.0.1") == 0
    t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 30
    # the name is locked from any address, in any case
    assert t.retry_after("Alice", "10.0.0.9") == 30
    clock.now += 30
    assert t.retry_after("alice", "10.0.0.1") == 0
    t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 60
    clock.now += 60
    t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 120


def test_the_wait_never_exceeds_the_window_and_old_failures_expire() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(20):
        t.failed("bob", "10.0.0.2")
    assert t.retry_after("bob", "10.0.0.3") == 600
    clock.now += 601
    assert t.retry_after("bob", "10.0.0.3") == 0


def test_an_address_spraying_many_names_is_stopped() -> None:
    clock = Clock()
    t = throttle(clock)
    for i in range(5):
        t.failed(f"user{i}", "10.0.0.4")
    assert t.retry_after("someone-new", "10.0.0.4") == 30
    assert t.retry_after("someone-new", "10.0.0.5") == 0


def test_success_clears_the_users_count_but_not_the_addresss() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(2):
        t.failed("carol", "10.0.0.6")
    t.succeeded("carol")
    t.failed("carol", "10.0.0.6")
    assert t.retry_after("carol", "10.0.0.7") == 0
    for _ in range(2):
        t.failed("dave", "10.0.0.6")
    assert t.retry_after("eve", "10.0.0.6") == 30  # 5 failures from that address


def test_made_up_names_cannot_fill_memory() -> None:
    t = throttle(Clock())
    for i in range(MAX_TRACKED + 50):
        t.failed(f"name-{i}", f"10.1.{i // 256 % 256}.{i % 256}")
    assert len(t._failures) <= MAX_TRACKED
