"""Whether a build server can build what it declares: tools present, disk to spare.

``make`` is needed by every build; a server that declares kernel build configurations
also needs what Kbuild runs besides the compiler (flex and bison for the kconfig parser,
bc for the timeconst header).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from labfleet.shared.events.resource import BuildServerCapabilities

from .errors import InventoryRefusal

ALWAYS_NEEDED = ("make",)
KERNEL_NEEDS = ("make", "flex", "bison", "bc")


def missing_tools(tools: Mapping[str, str], build_configs: Sequence[str]) -> list[str]:
    needed = KERNEL_NEEDS if build_configs else ALWAYS_NEEDED
    return [tool for tool in needed if tool not in tools]


def check_tools(name: str, capabilities: BuildServerCapabilities,
                build_configs: Sequence[str]) -> None:
    missing = missing_tools(capabilities.tools, build_configs)
    if not missing:
        return
    why = (f"kernel build configurations ({', '.join(build_configs)}) need "
           f"{', '.join(KERNEL_NEEDS)}" if build_configs else "every build runs make")
    raise InventoryRefusal(
        "missing_build_tool",
        f"{name} lacks {', '.join(missing)} ({why}); `<tool> --version` did not answer",
        hint=f"install {' '.join(missing)} on the host (Debian: apt-get install "
             f"{' '.join(missing)})", field="build_configs" if build_configs else None,
        details={"missing": missing, "found": sorted(capabilities.tools)})


def check_disk(name: str, capabilities: BuildServerCapabilities, minimum_gb: float) -> None:
    if capabilities.disk_free_gb >= minimum_gb:
        return
    where = capabilities.work_dir or "the work directory"
    raise InventoryRefusal(
        "insufficient_disk",
        f"{name} has {capabilities.disk_free_gb:.1f} GB free in {where}, under the "
        f"{minimum_gb:g} GB a build server needs",
        hint="free space on the host, point work_dir at a larger file system, or lower "
             "LABFLEET_BUILD_MIN_DISK_GB", field="work_dir",
        details={"free_gb": capabilities.disk_free_gb, "minimum_gb": minimum_gb})


def broken_toolchain_refusal(name: str, failures: Mapping[str, tuple[str, str]]
                             ) -> InventoryRefusal:
    """``failures``: arch → (compiler, why the one-line compile failed)."""
    said = "; ".join(f"{arch}: {compiler} failed to compile a one-line C file ({why})"
                     for arch, (compiler, why) in failures.items())
    return InventoryRefusal(
        "toolchain_broken",
        f"{name}: the toolchain of a declared architecture does not work — {said}",
        hint="repair or reinstall the cross compiler and its libc headers on the host (Debian: "
             "gcc-<triplet>, libc6-dev-<arch>-cross), or do not declare that architecture",
        field="architectures",
        details={"broken": [{"arch": arch, "compiler": c, "error": why}
                            for arch, (c, why) in failures.items()]})
