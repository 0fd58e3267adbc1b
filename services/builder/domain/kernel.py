"""Kernel builds: configure with fragments, collect what the config produced, or TuxMake.

A kernel build (``BuildSpec.build_kind == kernel``) differs from a plain make in two
places.  Configure merges the fragment files and the spec's inline ``config_options``
into the config target with ``scripts/kconfig/merge_config.sh`` and then checks that
every ``=y``/``=m`` option asked for survived ``olddefconfig`` — Kconfig drops an option
whose dependencies are missing without a word, and such a kernel may boot to silence.
Collect gathers, unless the spec lists its own artifacts, the image of the architecture,
every dtb built, the modules as a tarball when ``CONFIG_MODULES=y``, and the ``.config``.

With the TuxMake backend one ``tuxmake`` run does configure, compile and collect into an
output directory (its ``metadata.json`` included); the builder uploads that directory.
Every value from the spec travels as a positional argument of a constant script.
"""
from __future__ import annotations

from dataclasses import dataclass

from labfleet.shared.events.build import BuildBackend, BuildKind, BuildSpec
from labfleet.shared.events.resource import Arch

from .remote_plan import Workspace, toolchain_variables


@dataclass(frozen=True)
class KernelOutputs:
    """Where the default artifacts of an architecture land in the tree."""

    image: str       # the boot image
    tuxmake_image: str  # what ``tuxmake --kernel-image`` is told to build
    dts_dir: str     # dtbs are searched below it


KERNEL_OUTPUTS: dict[Arch, KernelOutputs] = {
    Arch.X86_64: KernelOutputs("arch/x86/boot/bzImage", "bzImage", "arch/x86/boot/dts"),
    Arch.ARM64: KernelOutputs("arch/arm64/boot/Image", "Image", "arch/arm64/boot/dts"),
    Arch.RISCV64: KernelOutputs("arch/riscv/boot/Image", "Image", "arch/riscv/boot/dts"),
    Arch.ARM: KernelOutputs("arch/arm/boot/zImage", "zImage", "arch/arm/boot/dts"),
}

#: TuxMake's names of the architectures
TUXMAKE_ARCH: dict[Arch, str] = {Arch.X86_64: "x86_64", Arch.ARM64: "arm64",
                                 Arch.RISCV64: "riscv", Arch.ARM: "arm"}

def is_kernel(spec: BuildSpec) -> bool:
    return spec.build_kind == BuildKind.KERNEL


def config_target(spec: BuildSpec) -> str:
    return spec.config or "defconfig"


def inline_fragment(ws: Workspace) -> str:
    return f"{ws.build_dir}/labfleet.config"


def out_dir(ws: Workspace) -> str:
    """Where collected (or TuxMake's) artifacts are gathered before the upload."""
    return f"{ws.build_dir}/out"


# ---- configure --------------------------------------------------------------------------

# $1 source tree, $2 config target, $3 inline fragment file, $4 number of fragment files,
# then the fragment files (relative to the tree), then $n inline lines preceded by their
# count, then the make variables.
CONFIGURE = r"""set -e
src=$1 config=$2 inline=$3 n=$4
shift 4
frags=""
i=0
while [ "$i" -lt "$n" ]; do frags="$frags $1"; shift; i=$((i + 1)); done
m=$1
shift
: > "$inline"
i=0
while [ "$i" -lt "$m" ]; do printf '%s\n' "$1" >> "$inline"; shift; i=$((i + 1)); done
[ "$m" -gt 0 ] && frags="$frags $inline"
echo "==> make $config"
make -C "$src" "$@" "$config"
cd "$src"
if [ -n "$frags" ]; then
  echo "==> merge_config.sh$frags"
  env "$@" ./scripts/kconfig/merge_config.sh -m .config $frags
  make "$@" olddefconfig
  dropped=0
  for f in $frags; do
    while IFS= read -r line; do
      case "$line" in
        CONFIG_*=y|CONFIG_*=m)
          if ! grep -qx -- "$line" .config; then
            echo "labfleet: option not applied: $line (from ${f##*/}; its dependencies are not met)"
            dropped=1
          fi ;;
      esac
    done < "$f"
  done
  [ "$dropped" -eq 0 ] || exit 3  # errors.OPTIONS_DROPPED
fi
echo "==> $(grep -c '=[ym]$' .config) options set"
"""


def configure_step(ws: Workspace, spec: BuildSpec, prefix: str) -> list[str]:
    frags = list(spec.config_fragments)
    return ["sh", "-c", CONFIGURE, "configure", ws.src, config_target(spec),
            inline_fragment(ws), str(len(frags)), *frags, str(len(spec.config_options)),
            *spec.config_options, *kernel_variables(spec, prefix)]


def kernel_variables(spec: BuildSpec, prefix: str) -> list[str]:
    # toolchain_variables gives the kernel style (ARCH=, CROSS_COMPILE=) once a config is set
    return toolchain_variables(spec.model_copy(update={"config": config_target(spec)}), prefix)


def compile_step(ws: Workspace, spec: BuildSpec, prefix: str, jobs: int) -> list[str]:
    return ["make", "-C", ws.src, f"-j{max(1, jobs)}", *kernel_variables(spec, prefix),
            *spec.make_targets]


# ---- collect ----------------------------------------------------------------------------

# $1 source tree, $2 output directory, $3 image path, $4 dts directory, $5 jobs, then the
# make variables.  Prints nothing but make's output; the files land in the output dir.
COLLECT = r"""set -e
src=$1 out=$2 image=$3 dts=$4 jobs=$5
shift 5
rm -rf "$out"
mkdir -p "$out"
cd "$src"
if [ ! -f "$image" ]; then
  echo "labfleet: the kernel image $image was not built"
  exit 4
fi
cp "$image" "$out/"
cp .config "$out/config"
[ -f System.map ] && cp System.map "$out/"
if [ -d "$dts" ]; then
  (cd "$dts" && find . -name '*.dtb' -type f) | while IFS= read -r dtb; do
    mkdir -p "$out/dtbs/$(dirname "$dtb")"
    cp "$dts/$dtb" "$out/dtbs/$dtb"
  done
fi
if grep -qx 'CONFIG_MODULES=y' .config; then
  echo "==> make modules_install"
  rm -rf "$out.modroot"
  make -j"$jobs" "$@" INSTALL_MOD_PATH="$out.modroot" INSTALL_MOD_STRIP=1 modules_install
  tar -C "$out.modroot" -czf "$out/modules.tar.gz" lib
  rm -rf "$out.modroot"
fi
echo "==> collected: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
"""


def collect_step(ws: Workspace, spec: BuildSpec, prefix: str, jobs: int) -> list[str]:
    outputs = KERNEL_OUTPUTS[spec.arch]
    return ["sh", "-c", COLLECT, "collect", ws.src, out_dir(ws), outputs.image,
            outputs.dts_dir, str(max(1, jobs)), *kernel_variables(spec, prefix)]


def list_outputs(ws: Workspace) -> list[str]:
    """Every file in the output directory, one path a line."""
    return ["find", out_dir(ws), "-type", "f"]


# ---- toolchain and TuxMake --------------------------------------------------------------

# ``$HOME/.local/bin`` first: where a per-user TuxMake (pip install --user, pipx) lives
USER_PATH = 'PATH="$HOME/.local/bin:$PATH"; export PATH; '

TOOLCHAIN_VERSION = r"""cc=${1}gcc
command -v "$cc" > /dev/null 2>&1 || { echo "$cc is not installed"; exit 0; }
"$cc" --version | head -n 1
"""

TUXMAKE_VERSION = USER_PATH + r"""command -v tuxmake > /dev/null 2>&1 || exit 0
tuxmake --version 2>/dev/null | head -n 1
"""


def toolchain_version(prefix: str) -> list[str]:
    return ["sh", "-c", TOOLCHAIN_VERSION, "toolchain", prefix]


def tuxmake_version() -> list[str]:
    return ["sh", "-c", TUXMAKE_VERSION, "tuxmake-version"]


def use_tuxmake(spec: BuildSpec, tuxmake: str) -> bool:
    """Whether this build runs through TuxMake, given the server's ``tuxmake --version``."""
    if not is_kernel(spec) or spec.backend == BuildBackend.MAKE:
        return False
    return spec.backend == BuildBackend.TUXMAKE or bool(tuxmake)


# $1 source tree, $2 output dir, $3 build dir, then tuxmake's arguments
TUXMAKE = USER_PATH + r"""src=$1 out=$2 build=$3
shift 3
rm -rf "$out" "$build"
exec tuxmake --runtime=null --directory "$src" --output-dir "$out" --build-dir "$build" "$@"
"""


def tuxmake_step(ws: Workspace, spec: BuildSpec, jobs: int) -> list[str]:
    outputs = KERNEL_OUTPUTS[spec.arch]
    args = [f"--target-arch={TUXMAKE_ARCH[spec.arch]}", "--toolchain=gcc",
            f"--kconfig={config_target(spec)}", f"--kernel-image={outputs.tuxmake_image}",
            f"--jobs={max(1, jobs)}", "--wrapper=none"]
    # fragment files are given by their path in the tree; inline lines as they are
    args += [f"--kconfig-add={ws.src}/{f}" for f in spec.config_fragments]
    args += [f"--kconfig-add={tuxmake_line(line)}" for line in spec.config_options]
    targets = ["config", "kernel", "modules"]
    if spec.arch != Arch.X86_64:
        targets.append("dtbs")
    return ["sh", "-c", TUXMAKE, "tuxmake", ws.src, out_dir(ws),
            f"{ws.build_dir}/tuxmake-build", *args, *targets]


def tuxmake_line(line: str) -> str:
    """TuxMake takes inline options as ``CONFIG_X=value``; "is not set" is ``=n``."""
    if line.startswith("# "):
        return line[2:].split(" ", 1)[0] + "=n"
    return line
