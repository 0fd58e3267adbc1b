"""select_build_server: filters, ranking, determinism (hypothesis) and the decision log."""
from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from labfleet.scheduler.domain.placement import (
    Outcome,
    PlacementPolicy,
    select_build_server,
)
from labfleet.scheduler.domain.servers import (
    BuildServerState,
    LoadSample,
    availability_problems,
    capability_problems,
)
from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import Arch, Lifecycle

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = PlacementPolicy(min_free_disk_gb=10.0)


def server(name: str, *, arches: tuple[Arch, ...] = (Arch.X86_64,), running: int = 0,
           slots: int = 1, cpu: float = 0.0, disk: float = 100.0,
           health: HealthStatus = HealthStatus.ONLINE,
           lifecycle: Lifecycle = Lifecycle.ACTIVE, labels: dict[str, str] | None = None,
           sid: uuid.UUID | None = None) -> BuildServerState:
    return BuildServerState(
        server_id=sid or uuid.uuid5(uuid.NAMESPACE_DNS, name), name=name,
        toolchains=frozenset(arches), labels=labels or {}, lifecycle=lifecycle, health=health,
        cpu_cores=8, slots=slots, running=running,
        sample=LoadSample(at=NOW, cpu_pct=cpu, load1=cpu / 100 * 8, disk_free_gb=disk))


def spec(arch: Arch = Arch.X86_64, **kw: object) -> BuildSpec:
    return BuildSpec(repo_url="https://example.org/linux.git", arch=arch, **kw)  # type: ignore[arg-type]


def test_prefers_the_least_loaded_capable_server() -> None:
    pool = [server("a", cpu=90), server("b", cpu=10), server("c", arches=(Arch.ARM64,))]
    d = select_build_server(spec(), pool, NOW, policy=POLICY)
    assert d.outcome == Outcome.PLACED
    assert d.chosen is not None and d.chosen.name == "b"
    assert [c.name for c in d.candidates][:2] == ["b", "a"]
    report = d.candidate(pool[2].server_id)
    assert report is not None and not report.capable
    assert any("no x86_64 toolchain" in r for r in report.reasons)


def test_history_estimate_outweighs_small_load_difference() -> None:
    fast, slow = server("fast", cpu=30), server("slow", cpu=0)
    est = {fast.server_id: 100.0, slow.server_id: 300.0}
    d = select_build_server(spec(), [slow, fast], NOW, policy=POLICY, estimates=est)
    assert d.chosen is not None and d.chosen.name == "fast"
    assert d.candidates[0].estimate_s == 100.0


def test_filters_offline_maintenance_low_disk_and_busy() -> None:
    pool = [server("off", health=HealthStatus.OFFLINE), server("mnt", lifecycle=Lifecycle.MAINTENANCE),
            server("disk", disk=3.0), server("busy", running=1)]
    d = select_build_server(spec(), pool, NOW, policy=POLICY)
    assert d.outcome == Outcome.WAIT_FOR_SLOT and d.chosen is None
    reasons = {c.name: " ".join(c.reasons) for c in d.candidates}
    assert "offline" in reasons["off"]
    assert "maintenance" in reasons["mnt"]
    assert "disk low: 3.0 GB free" in reasons["disk"]
    assert "slot(s) busy" in reasons["busy"]
    d2 = select_build_server(spec(), pool[:3], NOW, policy=POLICY)
    assert d2.outcome == Outcome.WAIT_FOR_SERVER


def test_no_capable_server_and_labels() -> None:
    d = select_build_server(spec(Arch.RISCV64), [server("a")], NOW, policy=POLICY)
    assert d.outcome == Outcome.NO_CAPABLE_SERVER
    assert "riscv64" in d.reason
    pool = [server("a", labels={"team": "bsp"}), server("b")]
    d = select_build_server(spec(labels={"team": "bsp"}), pool, NOW, policy=POLICY)
    assert d.chosen is not None and d.chosen.name == "a"


def test_pinned_server_and_alternatives() -> None:
    pool = [server("x86"), server("arm-1", arches=(Arch.X86_64, Arch.ARM64)),
            server("arm-2", arches=(Arch.ARM64,), cpu=50)]
    d = select_build_server(spec(Arch.ARM64, server="x86"), pool, NOW, policy=POLICY)
    assert d.outcome == Outcome.NO_CAPABLE_SERVER
    assert d.alternatives == ("arm-1", "arm-2")
    d = select_build_server(spec(Arch.ARM64, server="arm-2"), pool, NOW, policy=POLICY)
    assert d.chosen is not None and d.chosen.name == "arm-2"  # pinned wins over lower load
    by_id = select_build_server(spec(Arch.ARM64, server=str(pool[1].server_id)), pool, NOW,
                                policy=POLICY)
    assert by_id.chosen is not None and by_id.chosen.name == "arm-1"


def test_avoided_server_used_only_when_nothing_else_can() -> None:
    a, b = server("a"), server("b", running=1)
    d = select_build_server(spec(), [a, b], NOW, policy=POLICY, avoid=frozenset({a.server_id}))
    assert d.outcome == Outcome.WAIT_FOR_SLOT  # waits for b rather than going back to a
    d = select_build_server(spec(), [a], NOW, policy=POLICY, avoid=frozenset({a.server_id}))
    assert d.chosen is not None and d.chosen.name == "a"


def test_stale_sample_does_not_count_as_load() -> None:
    old = server("old", cpu=100)
    old = BuildServerState(**{**old.__dict__, "sample": LoadSample(
        at=NOW - timedelta(hours=1), cpu_pct=100, load1=8, disk_free_gb=100)})
    d = select_build_server(spec(), [old, server("fresh", cpu=50)], NOW, policy=POLICY)
    assert d.chosen is not None and d.chosen.name == "old"


# ---- properties -------------------------------------------------------------------------

ARCHES = list(Arch)


@st.composite
def pools(draw: st.DrawFn) -> list[BuildServerState]:
    n = draw(st.integers(min_value=0, max_value=8))
    out = []
    for i in range(n):
        out.append(server(
            f"s{draw(st.integers(0, 3))}-{i}",
            arches=tuple(draw(st.sets(st.sampled_from(ARCHES), min_size=0, max_size=4))),
            running=draw(st.integers(0, 2)), slots=draw(st.integers(0, 2)),
            cpu=draw(st.floats(0, 100)), disk=draw(st.sampled_from([1.0, 9.9, 10.0, 500.0])),
            health=draw(st.sampled_from(list(HealthStatus))),
            lifecycle=draw(st.sampled_from(list(Lifecycle))),
            labels=draw(st.sampled_from([{}, {"team": "bsp"}])),
            sid=uuid.UUID(int=draw(st.integers(0, 2**20)) * 1000 + i)))
    return out


@settings(max_examples=300, deadline=None)
@given(pools(), st.sampled_from(ARCHES), st.sampled_from([{}, {"team": "bsp"}]),
       st.randoms(use_true_random=False))
def test_order_independent_and_never_ineligible(pool: list[BuildServerState], arch: Arch,
                                                labels: dict[str, str],
                                                rnd: random.Random) -> None:
    s = spec(arch, labels=labels)
    estimates = {p.server_id: float(i * 37 % 11) for i, p in enumerate(pool) if i % 2}
    first = select_build_server(s, pool, NOW, policy=POLICY, estimates=estimates)
    shuffled = list(pool)
    rnd.shuffle(shuffled)
    second = select_build_server(s, shuffled, NOW, policy=POLICY, estimates=estimates)
    assert first == second
    if first.chosen is not None:
        chosen = first.chosen
        assert not capability_problems(s, chosen)
        assert not availability_problems(chosen, POLICY.min_free_disk_gb)
        assert chosen.free_slots > 0
    else:
        assert all(not c.eligible or c.free_slots == 0 for c in first.candidates)
    assert {c.server_id for c in first.candidates} == {p.server_id for p in pool}
