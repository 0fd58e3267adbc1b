"""Restart back-off: doubling, capped, and reset after a healthy run."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labfleet.cli.backoff import RestartBackoff


def test_delays_double_up_to_the_cap() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=8.0, stable_after_s=30.0)
    assert [backoff.delay_after(0.5) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_long_run_resets_the_delay() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=30.0, stable_after_s=30.0)
    for _ in range(4):
        backoff.delay_after(1.0)
    assert backoff.delay_after(45.0) == 1.0
    assert backoff.delay_after(1.0) == 2.0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RestartBackoff(initial_s=0)
    with pytest.raises(ValueError):
        RestartBackoff(initial_s=5, max_s=1)


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=50))
def test_every_delay_stays_within_the_limits(uptimes: list[float]) -> None:
    backoff = RestartBackoff(initial_s=0.5, max_s=20.0, stable_after_s=30.0)
    for uptime in uptimes:
        delay = backoff.delay_after(uptime)
        assert 0.5 <= delay <= 20.0
        if uptime >= 30.0:
            assert delay == 0.5
