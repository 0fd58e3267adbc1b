"""Error mapping, paging and presentation of the gateway (pure)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from labfleet.gateway.domain.errors import ApiError, status_for_code
from labfleet.gateway.domain.paging import MAX_PAGE_SIZE, matches_query, paginate
from labfleet.gateway.domain.presentation import build_progress, history_plot, usage
from labfleet.shared.events.build import BuildPhase, BuildStatus
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HostSample
from labfleet.shared.events.resource import ResourceKind


def test_service_error_codes_get_fitting_statuses() -> None:
    assert status_for_code("duplicate_name") == 409
    assert status_for_code("duplicate_address") == 409
    assert status_for_code("not_found") == 404
    assert status_for_code("unknown_build") == 404
    assert status_for_code("internal_error") == 502
    assert status_for_code("reply_too_large") == 502
    for code in ("authentication_failed", "connection_refused", "missing_toolchain",
                 "host_key_changed", "timeout"):
        assert status_for_code(code) == 422


def test_error_body_keeps_the_services_words() -> None:
    err = ApiError.from_info(ErrorInfo(code="connection_refused", message="port 22 closed",
                                       hint="is sshd running?", field="ssh_port"))
    assert err.status == 422
    assert err.body() == {"error": {"code": "connection_refused", "message": "port 22 closed",
                                    "hint": "is sshd running?", "field": "ssh_port"}}


@given(st.integers(0, 3000), st.integers(-5, 500), st.integers(-5, 400))
def test_paging_covers_every_item_once(total: int, page: int, size: int) -> None:
    items = list(range(total))
    window = paginate(items, page, size)
    assert 1 <= window.size <= MAX_PAGE_SIZE
    assert 1 <= window.page <= window.pages
    assert window.total == total
    everything = []
    for n in range(1, window.pages + 1):
        everything += paginate(items, n, window.size).items
    assert everything == items


def test_query_matches_every_word_in_any_field() -> None:
    assert matches_query(None, "x")
    assert matches_query("BUILD 01", "build-01", "10.0.0.1")
    assert matches_query("arm64 team=bsp", "b1", "arm64 x86_64", "team=bsp")
    assert not matches_query("riscv64", "b1", "arm64")


def sample(cpu: float, mem_used: int, at: datetime) -> HostSample:
    return HostSample(resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, at=at,
                      cpu_pct=cpu, load1=0.0, cpu_cores=2, mem_total_mb=1000,
                      mem_used_mb=mem_used, disk_total_gb=100.0, disk_free_gb=25.0)


def test_usage_percentages() -> None:
    u = usage(sample(12.34, 250, datetime.now(UTC)))
    assert (u.cpu_pct, u.mem_pct, u.disk_pct) == (12.3, 25.0, 75.0)
    assert usage(None).cpu_pct is None


def test_progress_is_full_when_finished_and_grows_by_phase() -> None:
    assert build_progress(BuildStatus.FAILED, BuildPhase.COMPILE) == 100.0
    assert build_progress(BuildStatus.QUEUED, None) == 0.0
    assert build_progress(BuildStatus.RUNNING, BuildPhase.FETCH) < \
        build_progress(BuildStatus.RUNNING, BuildPhase.COMPILE) < \
        build_progress(BuildStatus.RUNNING, BuildPhase.UPLOAD)
    assert build_progress(BuildStatus.RUNNING, BuildPhase.COMPILE, 150.0) == 100.0


def test_history_plot_maps_time_and_percent_into_the_box() -> None:
    t0 = datetime.now(UTC)
    plot = history_plot([sample(100.0, 0, t0 + timedelta(seconds=10)), sample(0.0, 1000, t0)],
                        width=100, height=50)
    assert plot.count == 2 and plot.first == t0
    assert plot.cpu_points == "0.0,50.0 100.0,0.0"
    assert plot.mem_points == "0.0,0.0 100.0,50.0"
    assert history_plot([]).count == 0
