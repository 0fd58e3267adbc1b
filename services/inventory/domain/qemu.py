"""What a QEMU host's answers mean (pure): emulators per guest architecture, KVM by function.

KVM is judged by running a guest, not by ``/dev/kvm`` existing: :data:`KVM_PROBE` is a
small Python program the probe runs on the host over SSH.  It opens ``/dev/kvm``, creates
a VM with one page of real-mode code and one vCPU, and calls ``KVM_RUN``.  The code counts
down a loop of 16.7 million iterations and then executes ``hlt``: under working KVM that
takes milliseconds; the program expects ``KVM_EXIT_HLT`` within its time limit.  A bare
``hlt`` is not enough — on hosts where KVM is nested or broken the first instructions
run, yet guests crawl a thousand times slower than native and real kernels never reach
userspace ("guests hang").  The program prints one line: ``usable <why>`` or
``unusable <why>``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from labfleet.shared.events.resource import Arch, GuestEmulator, KvmSupport

from .capabilities import first_line

#: the QEMU system emulator that runs guests of each architecture
EMULATOR_OF: dict[Arch, str] = {
    Arch.X86_64: "qemu-system-x86_64",
    Arch.ARM64: "qemu-system-aarch64",
    Arch.RISCV64: "qemu-system-riscv64",
    Arch.ARM: "qemu-system-arm",
}

#: libvirt's capabilities name guest architectures its own way
LIBVIRT_ARCHES: dict[str, Arch] = {
    "x86_64": Arch.X86_64, "aarch64": Arch.ARM64, "riscv64": Arch.RISCV64,
    "armv7l": Arch.ARM, "armv6l": Arch.ARM,
}

#: seconds the guest of the KVM probe may take to reach ``hlt``
KVM_PROBE_LIMIT_S = 3

# x86 real mode at 0x1000: mov dx,0x100; l1: mov cx,0xffff; l2: loop l2; dec dx; jnz l1; hlt
_GUEST_CODE = "BA0001B9FFFFE2FE4A75F8F4"

KVM_PROBE = r"""
import fcntl, mmap, os, signal, struct, sys, time, ctypes
def say(ok, why):
    print(("usable " if ok else "unusable ") + why, flush=True)
    os._exit(0)
if os.uname().machine not in ("x86_64", "i686", "amd64"):
    say(False, "the functional KVM test runs on x86 hosts only; " + os.uname().machine
        + " hosts are treated as without KVM")
try:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
except OSError as e:
    say(False, "cannot open /dev/kvm as this user: " + (e.strerror or str(e)))
try:
    vm = fcntl.ioctl(kvm, 0xAE01, 0)                       # KVM_CREATE_VM
    mem = mmap.mmap(-1, 0x1000)
    mem.write(bytes.fromhex(sys.argv[2]))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, 0x4020AE46, struct.pack("=IIQQQ", 0, 0, 0x1000, 0x1000, addr))
    cpu = fcntl.ioctl(vm, 0xAE41, 0)                       # KVM_CREATE_VCPU
    run = mmap.mmap(cpu, fcntl.ioctl(kvm, 0xAE04), mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(cpu, 0x8138AE83, sregs, True)              # KVM_GET_SREGS
    struct.pack_into("=Q", sregs, 0, 0)                    # cs.base = 0
    struct.pack_into("=H", sregs, 12, 0)                   # cs.selector = 0
    fcntl.ioctl(cpu, 0x4138AE84, bytes(sregs))             # KVM_SET_SREGS
    regs = bytearray(144)
    struct.pack_into("=QQ", regs, 128, 0x1000, 2)          # rip, rflags
    fcntl.ioctl(cpu, 0x4090AE82, bytes(regs))              # KVM_SET_REGS
except OSError as e:
    say(False, "creating a KVM guest failed: " + (e.strerror or str(e)))
limit = int(sys.argv[1])
signal.signal(signal.SIGALRM, lambda *a: say(False, "a KVM guest did not finish 16.7 million "
    "instructions within %d s (working KVM needs milliseconds): guests hang here" % limit))
signal.alarm(limit)
started = time.monotonic()
try:
    fcntl.ioctl(cpu, 0xAE80, 0)                            # KVM_RUN
except OSError as e:
    say(False, "KVM_RUN failed: " + (e.strerror or str(e)))
reason = struct.unpack_from("=I", run, 8)[0]
if reason == 5:
    say(True, "a KVM guest ran to its hlt in %.0f ms" % ((time.monotonic() - started) * 1000))
say(False, "KVM_RUN stopped for exit reason %d instead of hlt" % reason)
"""


def kvm_probe_argv(python: str = "python3") -> list[str]:
    return [python, "-c", KVM_PROBE, str(KVM_PROBE_LIMIT_S), _GUEST_CODE]


def parse_kvm_probe(exit_status: int | None, stdout: str, stderr: str) -> KvmSupport:
    line = first_line(stdout)
    verdict, _, why = line.partition(" ")
    if verdict == "usable":
        return KvmSupport(usable=True, reason=why)
    if verdict == "unusable":
        return KvmSupport(usable=False, reason=why)
    if exit_status == 127:
        return KvmSupport(usable=False, reason="python3 is not installed on the host, so KVM "
                                               "could not be tried; treated as unusable")
    if exit_status in (124, 137, -9):
        return KvmSupport(usable=False, reason="the KVM test did not end: guests hang here")
    said = (first_line(stderr) or line or f"exit status {exit_status}")[:200]
    return KvmSupport(usable=False, reason=f"the KVM test failed: {said}")


def parse_emulators(versions: Mapping[str, str], libvirt_guests: Iterable[Arch] | None
                    ) -> list[GuestEmulator]:
    """Guest architectures whose emulator answered ``--version`` (and, when libvirt's
    capabilities were read, that libvirt offers too)."""
    offered = set(libvirt_guests) if libvirt_guests is not None else None
    out: list[GuestEmulator] = []
    for arch, program in EMULATOR_OF.items():
        text = versions.get(program, "")
        if not text:
            continue
        if offered is not None and arch not in offered:
            continue
        out.append(GuestEmulator(arch=arch, emulator=program, version=emulator_version(text)))
    return out


def emulator_version(text: str) -> str:
    """``QEMU emulator version 7.2.22 (Debian ...)`` → ``7.2.22 (Debian ...)``."""
    line = first_line(text)
    marker = "version "
    return line.split(marker, 1)[1] if marker in line else line


def libvirt_version(number: int) -> str:
    """libvirt's encoded version (major * 1,000,000 + minor * 1,000 + release) as text."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


@dataclass(frozen=True)
class MissingEmulator:
    arch: Arch
    program: str


def missing_emulators(declared: Iterable[Arch], found: Iterable[GuestEmulator]
                      ) -> list[MissingEmulator]:
    have = {g.arch for g in found}
    return [MissingEmulator(a, EMULATOR_OF[a]) for a in dict.fromkeys(declared) if a not in have]


def default_allocatable(cpu_cores: int, memory_mb: int) -> tuple[int, int]:
    """All cores, and the memory less 1 GiB for the host itself (at least half of it)."""
    return cpu_cores, max(memory_mb - 1024, memory_mb // 2)
