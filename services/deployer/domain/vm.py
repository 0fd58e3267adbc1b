"""The libvirt domain of an environment: direct kernel boot, serial console, per arch.

Pure: from the environment, the paths on the host and the architecture to the domain XML
(built with ElementTree, so nothing a user typed can break out of its element).
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from labfleet.shared.events.resource import Arch


@dataclass(frozen=True)
class GuestMachine:
    #: libvirt's name of the guest architecture
    libvirt_arch: str
    machine: str
    #: the kernel's name of the first serial port of that machine
    console: str
    #: a CPU model for TCG where QEMU's default is wrong (32-bit cortex-a15 on arm64 virt)
    tcg_cpu: str | None = None


MACHINES: dict[Arch, GuestMachine] = {
    Arch.X86_64: GuestMachine("x86_64", "pc", "ttyS0"),
    Arch.ARM64: GuestMachine("aarch64", "virt", "ttyAMA0", tcg_cpu="cortex-a57"),
    Arch.ARM: GuestMachine("armv7l", "virt", "ttyAMA0", tcg_cpu="cortex-a15"),
    Arch.RISCV64: GuestMachine("riscv64", "virt", "ttyS0"),
}


#: the namespace of labfleet's element in a domain's ``<metadata>`` (libvirt keeps one
#: element per namespace for the application that owns it)
METADATA_NS = "https://labfleet.dev/xmlns/env/1"
ET.register_namespace("labfleet", METADATA_NS)


def vm_name(env_id: uuid.UUID) -> str:
    return f"labfleet-{env_id}"


@dataclass(frozen=True)
class VmPlan:
    env_id: uuid.UUID
    arch: Arch
    vcpus: int
    memory_mb: int
    kvm: bool
    kernel: str
    initrd: str | None
    #: the per-environment writable disk (an overlay over the cached rootfs)
    disk: str | None
    cmdline: str
    #: who asked for the environment, and what it runs: shown by ``virsh list --title``
    #: and on the host's page, kept in the domain's labfleet metadata
    owner: str = ""
    build_id: uuid.UUID | None = None
    commit: str | None = None
    deployment: int = 1

    @property
    def name(self) -> str:
        return vm_name(self.env_id)

    @property
    def title(self) -> str:
        build = f"build {str(self.build_id)[:8]}" if self.build_id else "no build"
        commit = f" @ {self.commit[:12]}" if self.commit else ""
        return f"{self.owner or 'unknown owner'}: {build}{commit} ({self.arch.value})"


def kernel_cmdline(arch: Arch, extra: str, has_disk: bool) -> str:
    parts = [f"console={MACHINES[arch].console}"]
    if has_disk and "root=" not in extra:
        parts.append("root=/dev/vda rw")
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def domain_xml(plan: VmPlan) -> str:
    guest = MACHINES[plan.arch]
    dom = ET.Element("domain", type="kvm" if plan.kvm else "qemu")
    ET.SubElement(dom, "name").text = plan.name
    ET.SubElement(dom, "uuid").text = str(plan.env_id)
    ET.SubElement(dom, "title").text = plan.title
    ET.SubElement(dom, "description").text = (
        f"labfleet environment {plan.env_id}, deployment {plan.deployment}; owner "
        f"{plan.owner or 'unknown'}; build {plan.build_id or 'none'}; commit {plan.commit or 'unknown'}")
    meta = ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{METADATA_NS}}}env")
    for key, value in (("env", str(plan.env_id)), ("deployment", str(plan.deployment)),
                       ("owner", plan.owner), ("build", str(plan.build_id or "")),
                       ("commit", plan.commit or "")):
        ET.SubElement(meta, f"{{{METADATA_NS}}}{key}").text = value
    ET.SubElement(dom, "memory", unit="MiB").text = str(plan.memory_mb)
    ET.SubElement(dom, "vcpu").text = str(plan.vcpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch=guest.libvirt_arch, machine=guest.machine).text = "hvm"
    ET.SubElement(os_, "kernel").text = plan.kernel
    if plan.initrd:
        ET.SubElement(os_, "initrd").text = plan.initrd
    ET.SubElement(os_, "cmdline").text = plan.cmdline
    if plan.kvm:
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    elif guest.tcg_cpu:
        cpu = ET.SubElement(dom, "cpu", mode="custom", match="exact")
        ET.SubElement(cpu, "model", fallback="allow").text = guest.tcg_cpu
    # a guest that powers off is gone; a reset restarts it, which the console judge counts
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if plan.disk:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=plan.disk)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")
