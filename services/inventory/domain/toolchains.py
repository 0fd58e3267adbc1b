"""Which compiler builds for which architecture, and which declared architectures lack one.

A build for an architecture needs either the host's own ``gcc`` (when the host *is* that
architecture) or the Debian cross compiler ``<triplet>-gcc``.  The builder passes the
toolchain's prefix as ``CROSS_COMPILE``; the native compiler has the empty prefix.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from labfleet.shared.events.resource import TOOLCHAIN_PREFIX, Arch, Toolchain

#: what ``uname -m`` prints on hosts of each architecture
_NATIVE_MACHINES: dict[Arch, frozenset[str]] = {
    Arch.X86_64: frozenset({"x86_64", "amd64"}),
    Arch.ARM64: frozenset({"aarch64", "arm64"}),
    Arch.ARM: frozenset({"armv7l", "armv7", "armv6l", "armv8l", "arm"}),
    Arch.RISCV64: frozenset({"riscv64"}),
}

#: the cross prefix on hosts of another architecture (x86_64 has none in TOOLCHAIN_PREFIX
#: because lab build servers are x86_64; an arm64 server building x86_64 needs one)
_CROSS_PREFIX: dict[Arch, str] = {
    **{arch: prefix for arch, prefix in TOOLCHAIN_PREFIX.items() if prefix},
    Arch.X86_64: "x86_64-linux-gnu-",
}


@dataclass(frozen=True)
class CompilerCandidate:
    arch: Arch
    prefix: str

    @property
    def compiler(self) -> str:
        return f"{self.prefix}gcc"


def native_arch(machine: str) -> Arch | None:
    for arch, names in _NATIVE_MACHINES.items():
        if machine.strip().lower() in names:
            return arch
    return None


def compiler_candidates(arch: Arch, machine: str) -> list[CompilerCandidate]:
    """Compilers that build for ``arch`` on a host whose ``uname -m`` is ``machine``, best first."""
    out: list[CompilerCandidate] = []
    if native_arch(machine) == arch:
        out.append(CompilerCandidate(arch, ""))
    out.append(CompilerCandidate(arch, _CROSS_PREFIX[arch]))
    return out


def compilers_to_probe(machine: str) -> list[str]:
    """Every compiler name worth asking ``--version`` on this host, without repeats."""
    seen: dict[str, None] = {"gcc": None}  # reported even when it builds for no listed arch
    for arch in Arch:
        for candidate in compiler_candidates(arch, machine):
            seen.setdefault(candidate.compiler, None)
    return list(seen)


def toolchains_found(machine: str, versions: Mapping[str, str]) -> list[Toolchain]:
    """One toolchain per architecture the host can build for; ``versions`` maps compiler → line."""
    found: list[Toolchain] = []
    for arch in Arch:
        for candidate in compiler_candidates(arch, machine):
            version = versions.get(candidate.compiler)
            if version:
                found.append(Toolchain(arch=arch, prefix=candidate.prefix,
                                       compiler=candidate.compiler, version=version))
                break
    return found


@dataclass(frozen=True)
class MissingToolchain:
    arch: Arch
    #: the compilers looked for, best first (the native ``gcc`` only on a host of that arch)
    compilers: tuple[str, ...]


def missing_toolchains(declared: Iterable[Arch], machine: str,
                       toolchains: Iterable[Toolchain]) -> list[MissingToolchain]:
    """Declared architectures that no answering compiler builds for."""
    have = {t.arch for t in toolchains}
    return [
        MissingToolchain(arch, tuple(c.compiler for c in compiler_candidates(arch, machine)))
        for arch in dict.fromkeys(declared)
        if arch not in have
    ]
