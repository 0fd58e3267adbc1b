"""Wait estimates from history, and submission checks with their errors."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from labfleet.scheduler.domain.estimates import estimated_start, remaining, typical_duration
from labfleet.scheduler.domain.placement import PlacementPolicy, select_build_server
from labfleet.scheduler.domain.servers import BuildServerState
from labfleet.scheduler.domain.submission import Rejection, check_submission
from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import Arch

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_typical_duration_is_the_median_of_recent_builds() -> None:
    assert typical_duration([]) is None
    assert typical_duration([10.0, 30.0, 20.0]) == 20.0
    assert typical_duration([1.0, 1.0, 1.0, 1.0, 1.0, 500.0, 500.0]) == 1.0  # only the recent 5


def test_estimated_start_serves_the_queue_in_order() -> None:
    assert estimated_start([0.0], []) == 0.0
    assert estimated_start([30.0], []) == 30.0
    assert estimated_start([30.0, 50.0], [100.0]) == 50.0  # the one ahead takes the 30 s slot
    assert estimated_start([30.0], [100.0, 100.0]) == 230.0
    assert estimated_start([None], []) is None
    assert estimated_start([10.0], [None]) is None
    assert estimated_start([], []) is None
    assert remaining(100.0, 130.0) == 0.0 and remaining(None, 1.0) is None


def pool() -> list[BuildServerState]:
    def s(name: str, arches: set[Arch], health: HealthStatus = HealthStatus.ONLINE) -> BuildServerState:
        return BuildServerState(server_id=uuid.uuid5(uuid.NAMESPACE_DNS, name), name=name,
                                toolchains=frozenset(arches), health=health)
    return [s("x86-only", {Arch.X86_64}), s("arm-box", {Arch.X86_64, Arch.ARM64}),
            s("arm-down", {Arch.ARM64}, HealthStatus.OFFLINE)]


def check(spec: BuildSpec) -> BuildServerState | None:
    p, policy = pool(), PlacementPolicy()
    return check_submission(spec, p, select_build_server(spec, p, NOW, policy=policy), policy)


def test_pinned_server_without_toolchain_names_why_and_alternatives() -> None:
    with pytest.raises(Rejection) as r:
        check(BuildSpec(repo_url="r", arch=Arch.ARM64, server="x86-only"))
    assert r.value.error.code == "toolchain_missing"
    assert "x86-only" in r.value.error.message and "aarch64-linux-gnu-gcc" in r.value.error.message
    assert r.value.alternatives == ["arm-box"]


def test_pinned_offline_unknown_and_auto_without_capable_server() -> None:
    with pytest.raises(Rejection) as r:
        check(BuildSpec(repo_url="r", arch=Arch.ARM64, server="arm-down"))
    assert r.value.error.code == "server_offline" and r.value.alternatives == ["arm-box"]
    with pytest.raises(Rejection) as r:
        check(BuildSpec(repo_url="r", arch=Arch.ARM64, server="nope"))
    assert r.value.error.code == "unknown_server" and r.value.error.field == "server"
    with pytest.raises(Rejection) as r:
        check(BuildSpec(repo_url="r", arch=Arch.RISCV64))
    assert r.value.error.code == "no_capable_server"
    assert "arm64, x86_64" in (r.value.error.hint or "")
    assert check(BuildSpec(repo_url="r", arch=Arch.ARM64)) is None  # Auto: accepted
    pinned = check(BuildSpec(repo_url="r", arch=Arch.ARM64, server="arm-box"))
    assert pinned is not None and pinned.name == "arm-box"
