"""Kernels and boot images for the lab's VMs and boards, built from Debian's linux-source.

Each architecture gets a tinyconfig kernel plus the options in ``guest/*.config`` and two
initramfs images: ``ok`` (``guest/init.c`` prints ``LABFLEET-BOOT-OK <release> <machine>``
and gives the console a shell; busybox where Debian ships it for the architecture) and
``broken`` (init exits, so the kernel panics).  Everything is cached by content (source
version, config fragments, init source, busybox version), so a second run only checks.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labfleet.lab.paths import LabPaths

GUEST = Path(__file__).parent / "guest"
LINUX_TARBALLS = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
BOOT_MARKER = "LABFLEET-BOOT-OK"
BROKEN_MARKER = "LABFLEET-BOOT-BROKEN"

Say = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """A kernel or image could not be built; ``log`` names the file with the details."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message + (f" (see {log})" if log else ""))
        self.log = log


@dataclass(frozen=True)
class Arch:
    name: str            # the lab's name: x86_64, arm64, riscv64
    make_arch: str       # ARCH= for the kernel build
    cross: str           # CROSS_COMPILE= prefix, empty for the build machine
    image_target: str    # make target
    image_path: str      # where the target lands, relative to the build dir
    qemu: str            # qemu-system-* binary
    console: str         # the kernel's serial console device

    @property
    def cc(self) -> str:
        return f"{self.cross}gcc" if self.cross else "gcc"

    @property
    def busybox(self) -> Path | None:
        # Debian ships busybox-static for the build machine's architecture only.
        path = Path("/bin/busybox")
        return path if self.name == "x86_64" and path.exists() else None


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "x86_64", "", "bzImage", "arch/x86/boot/bzImage",
                   "qemu-system-x86_64", "ttyS0"),
    "arm64": Arch("arm64", "arm64", "aarch64-linux-gnu-", "Image", "arch/arm64/boot/Image",
                  "qemu-system-aarch64", "ttyAMA0"),
    "riscv64": Arch("riscv64", "riscv", "riscv64-linux-gnu-", "Image", "arch/riscv/boot/Image",
                    "qemu-system-riscv64", "ttyS0"),
}


@dataclass(frozen=True)
class BootImages:
    """The files one architecture boots: a kernel and its two initramfs images."""

    arch: str
    kernel: Path
    release: str
    initrd: Path
    broken_initrd: Path

    def to_json(self) -> dict[str, str]:
        return {"arch": self.arch, "kernel": str(self.kernel), "release": self.release,
                "initrd": str(self.initrd), "broken_initrd": str(self.broken_initrd)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> BootImages:
        return cls(arch=data["arch"], kernel=Path(data["kernel"]), release=data["release"],
                   initrd=Path(data["initrd"]), broken_initrd=Path(data["broken_initrd"]))


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def linux_tarball() -> Path:
    if not LINUX_TARBALLS:
        raise ImageBuildError("no /usr/src/linux-source-*.tar.xz: install Debian's "
                              "linux-source package (bash infra/setup.sh does)")
    return LINUX_TARBALLS[-1]


def source_tree(paths: LabPaths, say: Say) -> Path:
    """Unpack the linux-source tarball once; the tree is shared by every build."""
    with cache_lock(paths, "source"):
        return _source_tree(paths, say)


def _source_tree(paths: LabPaths, say: Say) -> Path:
    tarball = linux_tarball()
    st = tarball.stat()
    tree = paths.cache_dir / "src" / tarball.name.removesuffix(".tar.xz")
    stamp = tree.parent / f"{tree.name}.unpacked"
    ident = f"{tarball}:{st.st_size}:{int(st.st_mtime)}"
    if stamp.exists() and stamp.read_text() == ident and tree.is_dir():
        return tree
    say(f"unpacking {tarball.name}")
    shutil.rmtree(tree, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xJf", str(tarball), "-C", str(tree.parent)], check=True)
    stamp.write_text(ident)
    return tree


def _run_logged(argv: list[str], log: Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        result = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise ImageBuildError(f"{argv[0]} {' '.join(argv[1:3])} failed "
                              f"(exit {result.returncode})", log)


def _kernel_key(arch: Arch, tarball: Path) -> str:
    fragments = [(GUEST / "common.config").read_text(), (GUEST / f"{arch.name}.config").read_text()]
    return _digest("kernel-1", tarball.name, str(tarball.stat().st_size), arch.name, *fragments)


@contextmanager
def cache_lock(paths: LabPaths, name: str) -> Iterator[None]:
    """Serialise builds that share a cache directory (several labs, several test runs)."""
    lock = paths.cache_dir / "locks" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_kernel(arch: Arch, paths: LabPaths, say: Say, jobs: int | None = None) -> tuple[Path, str]:
    """Return (kernel image, release), building it unless the cache has it."""
    with cache_lock(paths, f"kernel-{arch.name}"):
        return _build_kernel(arch, paths, say, jobs)


def _build_kernel(arch: Arch, paths: LabPaths, say: Say, jobs: int | None) -> tuple[Path, str]:
    tarball = linux_tarball()
    key = _kernel_key(arch, tarball)
    out = paths.cache_dir / "kernels" / f"{arch.name}-{key}"
    if (out / "kernel").exists() and (out / "release").exists():
        return out / "kernel", (out / "release").read_text().strip()
    tree = source_tree(paths, say)
    build = paths.cache_dir / "build" / arch.name
    build.mkdir(parents=True, exist_ok=True)
    log = paths.cache_dir / "logs" / f"kernel-{arch.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    make = ["make", "-C", str(tree), f"O={build}", f"ARCH={arch.make_arch}"]
    if arch.cross:
        make.append(f"CROSS_COMPILE={arch.cross}")
    started = time.monotonic()
    say(f"building the {arch.name} kernel (log: {log})")
    _run_logged([*make, "tinyconfig"], log)
    fragments = [str(GUEST / "common.config"), str(GUEST / f"{arch.name}.config")]
    _run_logged([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build),
                 str(build / ".config"), *fragments], log, cwd=build,
                env={"ARCH": arch.make_arch})
    _run_logged([*make, "olddefconfig"], log)
    _check_config(build / ".config", fragments, log)
    _run_logged([*make, f"-j{jobs or os.cpu_count() or 2}", arch.image_target], log)
    release = subprocess.run([*make, "-s", "kernelrelease"], capture_output=True, text=True,
                             check=True).stdout.strip()
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(build / arch.image_path, tmp / "kernel")
    shutil.copy(build / ".config", tmp / "config")
    (tmp / "release").write_text(release + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    say(f"built the {arch.name} kernel {release} in {time.monotonic() - started:.0f} s")
    return out / "kernel", release


def _check_config(config: Path, fragments: list[str], log: Path) -> None:
    """A requested option that Kconfig dropped would boot a kernel that prints nothing."""
    have = set(config.read_text().splitlines())
    missing = []
    for fragment in fragments:
        for line in Path(fragment).read_text().splitlines():
            if line.startswith("CONFIG_") and line.endswith("=y") and line not in have:
                missing.append(line)
    # A few options are selected away on some architectures and are not needed there.
    optional = {"CONFIG_RISCV_SBI_V01=y", "CONFIG_SYSCON_REBOOT_MODE=y",
                "CONFIG_POWER_RESET_SYSCON=y", "CONFIG_POWER_RESET_SYSCON_POWEROFF=y",
                "CONFIG_ARCH_RV64I=y", "CONFIG_SOC_VIRT=y", "CONFIG_ARM_PSCI_FW=y"}
    missing = [m for m in missing if m not in optional]
    if missing:
        raise ImageBuildError(f"kernel options not applied: {', '.join(missing)}", log)


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries; symlinks carry their target."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.write(b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def _compile_init(arch: Arch, broken: bool, workdir: Path, log: Path) -> bytes:
    workdir.mkdir(parents=True, exist_ok=True)
    binary = workdir / f"init-{arch.name}{'-broken' if broken else ''}"
    argv = [arch.cc, "-static", "-Os", "-Wall", "-o", str(binary), str(GUEST / "init.c")]
    if broken:
        argv.insert(1, "-DLABFLEET_BROKEN")
    if not shutil.which(arch.cc):
        raise ImageBuildError(f"{arch.cc} is missing: install Debian's cross toolchain "
                              "(bash infra/setup.sh does)")
    _run_logged(argv, log)
    subprocess.run([f"{arch.cross}strip" if arch.cross else "strip", str(binary)], check=True)
    return binary.read_bytes()


def build_initrd(arch: Arch, paths: LabPaths, say: Say, broken: bool = False) -> Path:
    with cache_lock(paths, f"initrd-{arch.name}"):
        return _build_initrd(arch, paths, say, broken)


def _build_initrd(arch: Arch, paths: LabPaths, say: Say, broken: bool) -> Path:
    busybox = arch.busybox
    bb_id = ""
    if busybox and not broken:
        bb_id = hashlib.sha256(busybox.read_bytes()).hexdigest()
    key = _digest("initrd-1", arch.name, str(broken), (GUEST / "init.c").read_bytes(), bb_id)
    out = paths.cache_dir / "images" / f"{arch.name}-{'broken' if broken else 'ok'}-{key}.cpio.gz"
    if out.exists():
        return out
    log = paths.cache_dir / "logs" / f"init-{arch.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    init = _compile_init(arch, broken, paths.cache_dir / "build" / "init", log)
    dirs = ["dev", "proc", "sys", "sys/class", "sys/class/thermal", "data", "tmp", "bin",
            "sbin", "root", "etc"]
    entries: list[tuple[str, int, bytes]] = [(d, 0o040755, b"") for d in dirs]
    entries.append(("init", 0o100755, init))
    if busybox and not broken:
        entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
        applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet.startswith(("bin/", "sbin/")) and applet != "bin/busybox":
                target = "busybox" if applet.startswith("bin/") else "../bin/busybox"
                entries.append((applet, 0o120777, target.encode()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio(entries), mtime=0))
    tmp.rename(out)
    say(f"built the {arch.name} {'broken' if broken else 'boot'} initramfs ({out.name})")
    return out


def build_all(paths: LabPaths, say: Say = print, arches: list[str] | None = None) -> dict[str, BootImages]:
    """Build (or find in the cache) every architecture's kernel and images."""
    result: dict[str, BootImages] = {}
    for name in arches or list(ARCHES):
        if name not in ARCHES:
            raise ImageBuildError(f"unknown architecture {name!r}: use one of {', '.join(ARCHES)}")
        arch = ARCHES[name]
        kernel, release = build_kernel(arch, paths, say)
        result[name] = BootImages(arch=name, kernel=kernel, release=release,
                                  initrd=build_initrd(arch, paths, say),
                                  broken_initrd=build_initrd(arch, paths, say, broken=True))
    with cache_lock(paths, "index"):
        index = paths.cache_dir / "images.json"
        known = json.loads(index.read_text()) if index.exists() else {}
        known.update({k: v.to_json() for k, v in result.items()})
        tmp = index.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=2))
        tmp.replace(index)
    return result


def cached_images(paths: LabPaths) -> dict[str, BootImages]:
    """The images of the last build, or {} if there is none (or a file went missing)."""
    index = paths.cache_dir / "images.json"
    if not index.exists():
        return {}
    images = {k: BootImages.from_json(v) for k, v in json.loads(index.read_text()).items()}
    if all(p.exists() for i in images.values() for p in (i.kernel, i.initrd, i.broken_initrd)):
        return images
    return {}
