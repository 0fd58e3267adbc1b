"""QEMU host rules without a host: KVM verdicts, emulators, libvirt URIs, utilization."""
from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from labfleet.inventory.adapters.qemu_probe import parse_capabilities
from labfleet.inventory.domain.qemu import (
    default_allocatable,
    emulator_version,
    kvm_probe_argv,
    libvirt_version,
    missing_emulators,
    parse_emulators,
    parse_kvm_probe,
)
from labfleet.monitor.domain.health import HealthPolicy, PollSucceeded, judge, HealthState
from labfleet.monitor.host_details import parse_ip_addr
from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import Arch, ResourceKind
from labfleet.shared.ssh.libvirt import canonical_uri, classify, known_hosts_lines, transport_uri

QEMU_VERSION = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"


def test_kvm_verdicts() -> None:
    assert parse_kvm_probe(0, "usable a KVM guest ran to its hlt in 3 ms\n", "").usable
    verdict = parse_kvm_probe(0, "unusable cannot open /dev/kvm as this user: Permission denied", "")
    assert not verdict.usable and "Permission denied" in verdict.reason
    assert "python3 is not installed" in parse_kvm_probe(127, "", "sh: python3: not found").reason
    hung = parse_kvm_probe(137, "", "")
    assert not hung.usable and "hang" in hung.reason
    odd = parse_kvm_probe(1, "", "Traceback ...\nOSError: boom")
    assert not odd.usable and "Traceback" in odd.reason


def test_emulators_need_version_and_libvirt() -> None:
    versions = {"qemu-system-x86_64": QEMU_VERSION, "qemu-system-aarch64": QEMU_VERSION}
    found = parse_emulators(versions, None)
    assert [g.arch for g in found] == [Arch.X86_64, Arch.ARM64]
    assert found[0].version.startswith("7.2.22")
    # libvirt that does not offer aarch64 (e.g. a cache from before the install) rules it out
    assert [g.arch for g in parse_emulators(versions, {Arch.X86_64: True})] == [Arch.X86_64]
    missing = missing_emulators([Arch.X86_64, Arch.RISCV64, Arch.RISCV64], found)
    assert [(m.arch, m.program) for m in missing] == [(Arch.RISCV64, "qemu-system-riscv64")]
    assert emulator_version("weird output") == "weird output"


def test_libvirt_numbers_and_allocatable() -> None:
    assert libvirt_version(9000000) == "9.0.0"
    assert libvirt_version(10_002_003) == "10.2.3"
    assert default_allocatable(8, 16384) == (8, 15360)
    assert default_allocatable(1, 1024) == (1, 512)  # small hosts keep half


def test_capabilities_xml() -> None:
    xml = """<capabilities><host/>
      <guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator>
        <domain type='qemu'/><domain type='kvm'/></arch></guest>
      <guest><os_type>hvm</os_type><arch name='armv7l'><domain type='qemu'/></arch></guest>
      <guest><os_type>hvm</os_type><arch name='sparc'><domain type='qemu'/></arch></guest>
      <guest><os_type>xen</os_type><arch name='aarch64'><domain type='xen'/></arch></guest>
    </capabilities>"""
    assert parse_capabilities(xml) == {Arch.X86_64: True, Arch.ARM: False}


def test_pinned_libvirt_uri(tmp_path: Path) -> None:
    assert canonical_uri("lab", "10.0.0.5", 2222) == "qemu+ssh://lab@10.0.0.5:2222/system"
    uri = transport_uri("lab", "10.0.0.5", 22, known_hosts=tmp_path / "kh", keyfile=tmp_path / "k")
    assert uri.startswith("qemu+libssh://lab@10.0.0.5:22/system?")
    assert "known_hosts_verify=normal" in uri and "sshauth=privkey" in uri
    assert "no_verify" not in uri
    assert "sshauth=password" in transport_uri("lab", "h", 22, known_hosts=tmp_path / "kh",
                                               keyfile=None)
    lines = known_hosts_lines("10.0.0.5", 2222, "ssh-ed25519 AAAAkey comment")
    assert lines == "[10.0.0.5]:2222 ssh-ed25519 AAAAkey\n10.0.0.5 ssh-ed25519 AAAAkey\n"


def test_libvirt_errors_are_classified() -> None:
    assert classify(Exception("authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!")
                    ).code == "host_key_changed"
    assert classify(Exception("authentication failed: Password request failed")).code == \
        "authentication_failed"
    assert classify(Exception("unable to connect to server at 'h:22': Connection refused")
                    ).code == "connection_refused"
    assert classify(Exception("libssh transport error: Remote command terminated with "
                              "non-zero code: 1")).code == "libvirt_unavailable"


def _sample(cpu: float, mem_used: int, disk_free: float) -> HostSample:
    return HostSample(resource_id=uuid.uuid4(), kind=ResourceKind.QEMU_HOST, at=datetime.now(UTC),
                      cpu_pct=cpu, load1=0.1, cpu_cores=2, mem_total_mb=1000,
                      mem_used_mb=mem_used, disk_total_gb=10.0, disk_free_gb=disk_free,
                      vm_count=1, vms=["a"])


def test_qemu_host_over_the_limit_is_degraded_naming_resource_and_value() -> None:
    policy = HealthPolicy(utilization_warning_pct=85.0)
    fine = judge(HealthState(), PollSucceeded(_sample(10.0, 500, 5.0)), policy)
    assert fine.status is HealthStatus.ONLINE and not fine.warnings
    busy = judge(fine, PollSucceeded(_sample(91.5, 900, 0.5)), policy)
    assert busy.status is HealthStatus.DEGRADED
    assert busy.warnings == ("cpu_high: cpu use 91.5 % is over the 85 % limit",
                             "memory_high: memory use 90.0 % is over the 85 % limit",
                             "storage_high: storage use 95.0 % is over the 85 % limit")
    back = judge(busy, PollSucceeded(_sample(20.0, 100, 9.0)), policy)
    assert back.status is HealthStatus.ONLINE
    # exactly at the limit is not over it
    assert judge(HealthState(), PollSucceeded(_sample(85.0, 850, 1.5)), policy).status \
        is HealthStatus.ONLINE


def test_ip_addr_json() -> None:
    text = ('[{"ifname":"lo","operstate":"UNKNOWN","address":"00:00:00:00:00:00","mtu":65536,'
            '"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},'
            '{"ifname":"eth0","operstate":"UP","address":"aa:bb:cc:dd:ee:ff","mtu":1500,'
            '"addr_info":[{"local":"10.1.2.3","prefixlen":24},{"local":"fe80::1","prefixlen":64}]}]')
    eth0 = parse_ip_addr(text)[1]
    assert eth0.name == "eth0" and eth0.state == "UP" and eth0.mtu == 1500
    assert eth0.addresses == ["10.1.2.3/24", "fe80::1/64"]


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
def test_kvm_probe_runs_here_and_agrees_with_a_real_boot() -> None:
    """The probe program itself, run on this machine; where the lab has booted a kernel
    under KVM (its memo for this boot), both must reach the same verdict."""
    import json

    result = subprocess.run(kvm_probe_argv(), capture_output=True, text=True, timeout=20)
    verdict = parse_kvm_probe(result.returncode, result.stdout, result.stderr)
    print(f"\n[measure] KVM here: usable={verdict.usable} ({verdict.reason})")
    assert verdict.reason
    memo = Path("/var/cache/labfleet/lab/kvm.json")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    if memo.exists() and os.geteuid() == 0:
        known = json.loads(memo.read_text())
        if known.get("boot_id") == boot_id:
            assert verdict.usable == known["kvm"], (verdict, known)
