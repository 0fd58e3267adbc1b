"""Reading a build server's answers and matching toolchains to architectures (no I/O)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labfleet.inventory.domain.capabilities import (
    HostFacts,
    UnreadableOutput,
    build_capabilities,
    parse_cpu_model,
    parse_df,
)
from labfleet.inventory.domain.toolchains import (
    compiler_candidates,
    compilers_to_probe,
    missing_toolchains,
    native_arch,
    toolchains_found,
)
from labfleet.shared.events.resource import Arch

DF_1K = """Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/sda1        263921856 180000000  70000000      72% /
"""
DF_512_SPACES = """Filesystem 512-blocks Used Available Capacity Mounted on
/dev/mapper/vg-work 2000 500 1500 25% /srv/build area
"""
MEMINFO = "MemTotal:       16303412 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
X86_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n"
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
RISCV_CPUINFO = "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdc\nmmu\t\t: sv39\nuarch\t\t: sifive,u74-mc\n"
GCC = "gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.\n"


def facts(**overrides: object) -> HostFacts:
    base: dict[str, object] = {
        "nproc": "8\n", "machine": "x86_64\n", "cpuinfo": X86_CPUINFO, "meminfo": MEMINFO,
        "df": DF_1K, "work_dir": "/home/build\n",
        "versions": {"gcc": GCC, "make": "GNU Make 4.3\nBuilt for x86_64\n",
                     "aarch64-linux-gnu-gcc": "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0\n"}}
    base.update(overrides)
    return HostFacts(**base)  # type: ignore[arg-type]


def test_df_block_size_and_mount_with_spaces() -> None:
    one_k = parse_df(DF_1K)
    assert one_k.total_bytes == 263921856 * 1024 and one_k.free_bytes == 70000000 * 1024
    assert one_k.mount == "/"
    half_k = parse_df(DF_512_SPACES)
    assert half_k.total_bytes == 2000 * 512 and half_k.free_bytes == 1500 * 512
    assert half_k.mount == "/srv/build area"
    with pytest.raises(UnreadableOutput, match="df"):
        parse_df("df: /nowhere: No such file or directory\n")


@pytest.mark.parametrize(("cpuinfo", "model"), [
    (X86_CPUINFO, "Intel(R) Xeon(R) CPU"),
    (ARM_CPUINFO, "Raspberry Pi 4 Model B Rev 1.4"),
    (RISCV_CPUINFO, "sifive,u74-mc"),
    ("", ""),
])
def test_cpu_model_per_architecture(cpuinfo: str, model: str) -> None:
    assert parse_cpu_model(cpuinfo) == model


def test_capabilities_from_a_hosts_answers() -> None:
    caps = build_capabilities(facts())
    assert caps.cpu_cores == 8 and caps.machine == "x86_64"
    assert caps.memory_mb == 16303412 // 1024
    assert caps.disk_total_gb == round(263921856 * 1024 / 1024**3, 2)
    assert caps.disk_free_gb == round(70000000 * 1024 / 1024**3, 2)
    assert caps.work_dir == "/home/build"
    assert {(t.arch, t.compiler, t.prefix) for t in caps.toolchains} == {
        (Arch.X86_64, "gcc", ""), (Arch.ARM64, "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-")}
    assert next(t for t in caps.toolchains if t.arch is Arch.X86_64).version == GCC.splitlines()[0]
    assert caps.tools == {"make": "GNU Make 4.3"}


@pytest.mark.parametrize(("field", "value", "command"), [
    ("nproc", "sh: nproc: not found\n", "nproc"),
    ("nproc", "0\n", "nproc"),
    ("meminfo", "", "meminfo"),
    ("df", "", "df"),
])
def test_unreadable_answers_name_the_command(field: str, value: str, command: str) -> None:
    with pytest.raises(UnreadableOutput, match=command):
        build_capabilities(facts(**{field: value}))


def test_native_compiler_counts_only_on_its_own_architecture() -> None:
    assert native_arch("aarch64") is Arch.ARM64 and native_arch("x86_64") is Arch.X86_64
    assert native_arch("mips") is None
    # on an arm64 host the plain gcc builds arm64, and x86_64 needs a cross compiler
    on_arm = toolchains_found("aarch64", {"gcc": "gcc 12"})
    assert [(t.arch, t.prefix) for t in on_arm] == [(Arch.ARM64, "")]
    assert [c.compiler for c in compiler_candidates(Arch.X86_64, "aarch64")] == [
        "x86_64-linux-gnu-gcc"]
    assert "x86_64-linux-gnu-gcc" in compilers_to_probe("aarch64")
    assert compilers_to_probe("x86_64")[0] == "gcc"


def test_missing_toolchain_names_the_compiler_looked_for() -> None:
    found = toolchains_found("x86_64", {"gcc": "gcc 12"})
    missing = missing_toolchains([Arch.X86_64, Arch.RISCV64, Arch.RISCV64], "x86_64", found)
    assert [(m.arch, m.compilers) for m in missing] == [(Arch.RISCV64, ("riscv64-linux-gnu-gcc",))]
    no_gcc = missing_toolchains([Arch.X86_64], "x86_64", [])
    assert no_gcc[0].compilers == ("gcc", "x86_64-linux-gnu-gcc")


ALL_COMPILERS = sorted({c for m in ("x86_64", "aarch64") for c in compilers_to_probe(m)})


@given(machine=st.sampled_from(["x86_64", "aarch64", "armv7l", "riscv64", "mips"]),
       installed=st.sets(st.sampled_from(ALL_COMPILERS)),
       declared=st.lists(st.sampled_from(list(Arch)), max_size=6))
def test_an_architecture_is_missing_exactly_when_no_candidate_answers(
        machine: str, installed: set[str], declared: list[Arch]) -> None:
    found = toolchains_found(machine, {c: f"{c} 12" for c in installed})
    missing = {m.arch for m in missing_toolchains(declared, machine, found)}
    for arch in set(declared):
        answers = any(c.compiler in installed for c in compiler_candidates(arch, machine))
        assert (arch in missing) == (not answers)
    # every toolchain reported is one that answered, the preferred one first
    for t in found:
        assert t.compiler in installed
        better = compiler_candidates(t.arch, machine)
        assert all(c.compiler not in installed for c in better[:better.index(
            next(c for c in better if c.compiler == t.compiler))])
