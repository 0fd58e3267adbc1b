"""select_qemu_host and estimated_wait: filters, ranking, order independence (hypothesis)."""
from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labfleet.scheduler.domain.env_placement import (
    EnvOutcome,
    EnvPolicy,
    Holding,
    QemuHostState,
    estimated_wait,
    select_qemu_host,
)
from labfleet.shared.events.build import ArtifactInfo
from labfleet.shared.events.env import (
    ArtifactChoiceError,
    ArtifactSelector,
    EnvSpec,
    pick_boot_artifacts,
)
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import Arch, Lifecycle

ALL = frozenset({Arch.X86_64, Arch.ARM64, Arch.RISCV64})


def host(name: str, *, vcpus: int = 4, memory: int = 4096, rv: int = 0, rm: int = 0,
         cpu: float | None = 10.0, mem: float | None = 20.0, disk: float | None = 30.0,
         guests: frozenset[Arch] = ALL, kvm: bool = False, machine: str = "x86_64",
         health: HealthStatus = HealthStatus.ONLINE,
         lifecycle: Lifecycle = Lifecycle.ACTIVE) -> QemuHostState:
    return QemuHostState(host_id=uuid.uuid5(uuid.NAMESPACE_DNS, name), name=name,
                         lifecycle=lifecycle, health=health, cpu_arch=machine, guests=guests,
                         kvm_usable=kvm, vcpus=vcpus, memory_mb=memory, reserved_vcpus=rv,
                         reserved_memory_mb=rm, cpu_pct=cpu, mem_pct=mem, disk_pct=disk)


def spec(arch: Arch = Arch.X86_64, **kw: object) -> EnvSpec:
    return EnvSpec(arch=arch, artifacts=ArtifactSelector(commit="abcdef1"), **kw)  # type: ignore[arg-type]


def test_prefers_lower_utilization_among_hosts_that_fit() -> None:
    hosts = [host("busy", rv=3, rm=3000), host("idle"), host("no-rv", guests=frozenset({Arch.X86_64}))]
    d = select_qemu_host(spec(Arch.RISCV64), hosts)
    assert d.outcome == EnvOutcome.PLACED and d.chosen and d.chosen.name == "idle"
    names = [c.name for c in d.candidates]
    assert names[:2] == ["idle", "busy"]
    no_rv = next(c for c in d.candidates if c.name == "no-rv")
    assert not no_rv.capable and "no QEMU emulator for riscv64" in no_rv.reasons


def test_host_over_the_limit_takes_no_vm_and_the_next_is_chosen() -> None:
    hosts = [host("full", cpu=92.0), host("other", rv=2, rm=2000)]
    d = select_qemu_host(spec(), hosts)
    assert d.chosen and d.chosen.name == "other"
    full = next(c for c in d.candidates if c.name == "full")
    assert not full.available and any("CPU at 92 %" in r for r in full.reasons)
    # a degraded (monitor) or maintenance host neither
    for bad in (host("a", health=HealthStatus.DEGRADED), host("a", lifecycle=Lifecycle.MAINTENANCE),
                host("a", disk=90.0), host("a", mem=86.0)):
        assert select_qemu_host(spec(), [bad]).outcome == EnvOutcome.WAIT_FOR_CAPACITY


def test_kvm_needs_usable_kvm_of_the_same_architecture() -> None:
    hosts = [host("tcg"), host("kvm-x86", kvm=True)]
    d = select_qemu_host(spec(kvm=True), hosts)
    assert d.chosen and d.chosen.name == "kvm-x86"
    d = select_qemu_host(spec(Arch.ARM64, kvm=True), hosts)
    assert d.outcome == EnvOutcome.NO_CAPABLE_HOST
    assert "KVM runs x86_64 guests, not arm64" in d.reason


def test_explicit_host_lacking_capacity_names_the_alternatives() -> None:
    hosts = [host("small", rv=4), host("roomy"), host("other", cpu=99.0)]
    d = select_qemu_host(spec(host="small"), hosts)
    assert d.outcome == EnvOutcome.WAIT_FOR_CAPACITY and d.chosen is None
    assert d.alternatives == ("roomy",)
    assert any("0 of 4 vCPUs free" in p for p in d.pinned_problems)
    assert select_qemu_host(spec(host="nope"), hosts).outcome == EnvOutcome.UNKNOWN_HOST
    d = select_qemu_host(spec(host="roomy", vcpus=8), hosts)
    assert d.outcome == EnvOutcome.NO_CAPABLE_HOST


hosts_strategy = st.lists(
    st.builds(lambda i, v, m, rv, rm, cpu, kvm, h: host(
        f"h{i}", vcpus=v, memory=m, rv=min(rv, v), rm=min(rm, m), cpu=cpu, kvm=kvm, health=h),
        st.integers(0, 50), st.integers(1, 16), st.integers(256, 16384), st.integers(0, 16),
        st.integers(0, 16384), st.floats(0, 100), st.booleans(),
        st.sampled_from([HealthStatus.ONLINE, HealthStatus.ONLINE, HealthStatus.DEGRADED,
                         HealthStatus.OFFLINE])),
    max_size=8, unique_by=lambda h: h.name)


@settings(max_examples=200, deadline=None)
@given(hosts_strategy, st.integers(1, 8), st.integers(64, 8192), st.booleans(), st.randoms())
def test_choice_is_sound_and_independent_of_order(hosts, vcpus, memory, kvm, rnd) -> None:  # type: ignore[no-untyped-def]
    s = spec(vcpus=vcpus, memory_mb=memory, kvm=kvm)
    d = select_qemu_host(s, hosts)
    shuffled = list(hosts)
    rnd.shuffle(shuffled)
    d2 = select_qemu_host(s, shuffled)
    assert (d.chosen and d.chosen.host_id) == (d2.chosen and d2.chosen.host_id)
    assert d.candidates == d2.candidates
    if d.chosen is None:
        assert not any(c.eligible for c in d.candidates)
        return
    h = d.chosen
    # never over-commits, never a busy, sick or incapable host
    assert h.free_vcpus >= vcpus and h.free_memory_mb >= memory
    assert h.health == HealthStatus.ONLINE and (h.cpu_pct or 0) <= 85.0
    assert not kvm or h.kvm_usable
    best = min(c.utilization for c in d.candidates if c.eligible)
    assert d.candidates[0].host_id == h.host_id and d.candidates[0].utilization == best


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(64, 2048)), min_size=1, max_size=12))
def test_repeated_placement_never_exceeds_capacity(requests) -> None:  # type: ignore[no-untyped-def]
    hosts = {h.host_id: h for h in (host("a", vcpus=4, memory=4096), host("b", vcpus=2, memory=2048))}
    for v, m in requests:
        d = select_qemu_host(spec(vcpus=v, memory_mb=m), hosts.values())
        if d.chosen:
            hosts[d.chosen.host_id] = d.chosen.reserve(v, m)
    for h in hosts.values():
        assert h.reserved_vcpus <= h.vcpus and h.reserved_memory_mb <= h.memory_mb


def test_estimated_wait_follows_the_leases() -> None:
    h = host("only", vcpus=2, memory=2048, rv=2, rm=1024)
    holdings = [Holding(h.host_id, 1, 512, 300.0), Holding(h.host_id, 1, 512, 100.0)]
    assert estimated_wait(spec(), [h], holdings, []) == pytest.approx(100.0)
    # one ahead takes the vCPU freed at 100 s for its 50 s lease: ours comes at 150 s,
    # before the other holding ends at 300 s
    assert estimated_wait(spec(), [h], holdings, [spec(lease_s=50)]) == pytest.approx(150.0)
    assert estimated_wait(spec(), [h], holdings, [spec(lease_s=500)]) == pytest.approx(300.0)
    assert estimated_wait(spec(), [host("x", health=HealthStatus.OFFLINE)], [], []) is None


def art(name: str) -> ArtifactInfo:
    return ArtifactInfo(name=name, size=1, sha256="0" * 64, object_name=f"b/{name}",
                        bucket="artifacts")


def test_boot_artifacts_by_usual_names_or_as_named() -> None:
    chosen = pick_boot_artifacts(spec(), [art("arch/x86/boot/bzImage"), art("initrd.cpio.gz"),
                                          art("System.map")])
    assert chosen.kernel.name == "arch/x86/boot/bzImage" and chosen.initrd
    assert chosen.rootfs is None
    chosen = pick_boot_artifacts(spec(kernel_artifact="odd"), [art("odd"), art("initrd")])
    assert chosen.kernel.name == "odd"
    with pytest.raises(ArtifactChoiceError, match="no kernel image"):
        pick_boot_artifacts(spec(), [art("hello")])
    with pytest.raises(ArtifactChoiceError, match="no artifact named 'x'"):
        pick_boot_artifacts(spec(initrd_artifact="x"), [art("kernel")])


def test_spec_validation_messages() -> None:
    with pytest.raises(ValueError, match="exactly one of build_id, commit or branch"):
        ArtifactSelector(commit="abc1234", branch="main")
    assert spec(host="Auto").host is None
    random.seed(0)
