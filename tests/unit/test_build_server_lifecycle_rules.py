"""Pure rules of build-server lifecycle: windows, low-disk pause, host key, history figures."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from labfleet.gateway.domain.history import average_build_times, usage_during
from labfleet.inventory.domain.errors import InventoryRefusal
from labfleet.inventory.domain.lifecycle import check_window, state_at
from labfleet.inventory.domain.readiness import missing_tools
from labfleet.monitor.domain.health import HealthPolicy, HealthState, PollFailed, judge
from labfleet.scheduler.domain.servers import BuildServerState, LoadSample, availability_problems
from labfleet.shared.events.build import BuildSpec, BuildStatus, BuildView
from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import Arch, Lifecycle, MaintenanceWindow, ResourceKind

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_a_window_is_in_force_only_between_its_start_and_end() -> None:
    later = MaintenanceWindow(start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=2))
    assert state_at(later, NOW).lifecycle == Lifecycle.ACTIVE
    assert state_at(later, NOW).maintenance == later  # upcoming: kept
    assert state_at(later, NOW + timedelta(minutes=90)).lifecycle == Lifecycle.MAINTENANCE
    over = state_at(later, NOW + timedelta(hours=3))
    assert over.lifecycle == Lifecycle.ACTIVE and over.maintenance is None
    assert state_at(MaintenanceWindow(), NOW).lifecycle == Lifecycle.MAINTENANCE
    assert state_at(None, NOW).lifecycle == Lifecycle.ACTIVE


def test_a_window_ending_before_it_starts_or_in_the_past_is_refused() -> None:
    with pytest.raises(InventoryRefusal, match="ends .* before it starts"):
        check_window(MaintenanceWindow(start=NOW, end=NOW - timedelta(minutes=1)), NOW)
    with pytest.raises(InventoryRefusal, match="already past"):
        check_window(MaintenanceWindow(end=NOW - timedelta(seconds=1)), NOW)


def test_kernel_configs_need_flex_bison_bc_and_every_server_make() -> None:
    assert missing_tools({"make": "x"}, []) == []
    assert missing_tools({}, []) == ["make"]
    assert missing_tools({"make": "x", "flex": "x"}, ["tinyconfig"]) == ["bison", "bc"]


def server(disk: float, pause: bool) -> BuildServerState:
    return BuildServerState(server_id=uuid.uuid4(), name="s", toolchains=frozenset({Arch.X86_64}),
                            health=HealthStatus.DEGRADED, pause_on_low_disk=pause,
                            sample=LoadSample(at=NOW, cpu_pct=0, load1=0, disk_free_gb=disk))


def test_low_disk_pauses_only_servers_whose_admin_asked_for_it() -> None:
    assert availability_problems(server(8.0, False), 5.0, 10.0) == []
    assert availability_problems(server(8.0, True), 5.0, 10.0) == [
        "paused on low disk: 8.0 GB free, under the 10 GB warning level"]
    assert availability_problems(server(12.0, True), 5.0, 10.0) == []
    assert availability_problems(server(3.0, False), 5.0, 10.0)[0].startswith("disk low")


def test_a_changed_host_key_takes_the_host_offline_at_once() -> None:
    online = HealthState(status=HealthStatus.ONLINE)
    failed = PollFailed(at=NOW, code="host_key_changed", message="the key differs")
    after = judge(online, failed, HealthPolicy(offline_after_failures=3))
    assert after.status == HealthStatus.OFFLINE
    assert after.reason.startswith("host_key_changed: ")
    other = judge(online, PollFailed(at=NOW, code="timeout", message="slow"),
                  HealthPolicy(offline_after_failures=3))
    assert other.status == HealthStatus.ONLINE  # one lost poll is no outage


def build(arch: Arch, config: str, seconds: float, status: BuildStatus) -> BuildView:
    return BuildView(build_id=uuid.uuid4(), spec=BuildSpec(repo_url="r", arch=arch, config=config),
                     status=status, created_at=NOW, started_at=NOW,
                     finished_at=NOW + timedelta(seconds=seconds))


def test_average_build_time_per_arch_and_config_counts_succeeded_builds_only() -> None:
    averages = average_build_times([
        build(Arch.X86_64, "tinyconfig", 30, BuildStatus.SUCCEEDED),
        build(Arch.X86_64, "tinyconfig", 50, BuildStatus.SUCCEEDED),
        build(Arch.X86_64, "tinyconfig", 5, BuildStatus.FAILED),
        build(Arch.ARM64, "defconfig", 100, BuildStatus.SUCCEEDED)])
    assert [(a.arch, a.config, a.builds, a.mean_s, a.last_s) for a in averages] == [
        ("arm64", "defconfig", 1, 100.0, 100.0), ("x86_64", "tinyconfig", 2, 40.0, 30.0)]


def test_usage_during_a_build() -> None:
    def sample(cpu: float, mem: int) -> HostSample:
        return HostSample(resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, at=NOW,
                          cpu_pct=cpu, load1=cpu / 50, cpu_cores=2, mem_total_mb=4096,
                          mem_used_mb=mem, disk_total_gb=100, disk_free_gb=50, compile_procs=3)
    u = usage_during([sample(20, 1000), sample(80, 3000)])
    assert (u.samples, u.cpu_pct_mean, u.cpu_pct_max, u.mem_used_mb_max) == (2, 50.0, 80.0, 3000)
    assert usage_during([]).samples == 0
