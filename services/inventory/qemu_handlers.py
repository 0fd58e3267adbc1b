"""Registering a QEMU host: SSH checks as for build servers, then libvirt with the pinned key.

Kept apart from :mod:`.handlers` (build servers, reading, removal) but built from the same
pieces: the login check, the SSH error mapping and the audit trail.  The order of checks
gives the most precise refusal first: SSH connection, host key, authentication, the
image directory, then libvirt (not installed / not running, with libvirt's and the
host's own ``virsh`` message), then the declared guest architectures' emulators.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from labfleet.shared.events.resource import (
    Lifecycle,
    QemuHostCapabilities,
    RegisterQemuHost,
    RegistrationReply,
    ResourceKind,
    ResourceRegistered,
    ResourceView,
    SshTarget,
)
from labfleet.shared.ssh import Credentials, SshError
from labfleet.shared.ssh.libvirt import LibvirtFailure, canonical_uri

from .adapters.qemu_probe import LibvirtFacts, QemuHostFacts, QemuHostProbe
from .adapters.repository import SealedCredentials, StoredResource
from .domain.capabilities import GIB, UnreadableOutput, parse_df, parse_meminfo_kb
from .domain.errors import InventoryRefusal
from .domain.qemu import default_allocatable, libvirt_version, missing_emulators, parse_emulators
from .handlers import (
    InventoryDeps,
    _audit_safely,
    _login,
    _pinned_host_key,
    _refusal_from_ssh,
)

log = logging.getLogger(__name__)


@dataclass
class QemuHostDeps:
    inventory: InventoryDeps
    probe: QemuHostProbe


async def register_qemu_host(cmd: RegisterQemuHost, qdeps: QemuHostDeps) -> RegistrationReply:
    deps = qdeps.inventory
    attempt = {"address": cmd.address, "port": cmd.ssh_port, "username": cmd.username,
               "auth": "private_key" if cmd.private_key else "password",
               "guest_architectures": [a.value for a in cmd.guest_architectures]}
    try:
        view = await _register_qemu_host(cmd, deps, qdeps.probe)
    except Exception as exc:  # noqa: BLE001 - every failure is owed an answer and an audit row
        refusal = exc if isinstance(exc, InventoryRefusal) else _unexpected(exc, cmd)
        log.info("QEMU host registration refused",
                 extra={"resource_name": cmd.hostname, "code": refusal.code, **attempt})
        await _audit_safely(deps, cmd.requested_by, "register_qemu_host", refusal.code,
                            None, cmd.hostname, message=refusal.message, **attempt)
        return RegistrationReply(ok=False, error=refusal.as_error())
    assert view.qemu is not None
    log.info("QEMU host registered", extra={
        "resource_name": view.name, "resource_id": str(view.resource_id), **attempt,
        "kvm_usable": view.qemu.kvm.usable, "guests": [g.arch.value for g in view.qemu.guests]})
    return RegistrationReply(ok=True, resource=view)


async def _register_qemu_host(cmd: RegisterQemuHost, deps: InventoryDeps,
                              probe: QemuHostProbe) -> ResourceView:
    creds = _login(cmd)
    await deps.resources.check_free(ResourceKind.QEMU_HOST, cmd.hostname, cmd.address,
                                    cmd.ssh_port)
    try:
        host_key, presented = await _pinned_host_key(cmd, probe)
        facts = await probe.facts(cmd.address, cmd.ssh_port, creds, host_key, cmd.image_dir)
    except SshError as exc:
        raise _refusal_from_ssh(exc, cmd) from None
    try:
        return await _validated(cmd, deps, probe, creds, host_key, presented, facts)
    except BaseException:
        if facts.made_dir:
            await _remove_made_dir(cmd, probe, creds, host_key, facts.made_dir)
        raise


async def _remove_made_dir(cmd: RegisterQemuHost, probe: QemuHostProbe, creds: Credentials,
                           host_key: str, made_dir: str) -> None:
    """A refused host keeps nothing of labfleet's: the image directory made for it goes."""
    try:
        await probe.remove_made_dir(cmd.address, cmd.ssh_port, creds, host_key, made_dir)
    except Exception as exc:  # noqa: BLE001 - the refusal is what the admin must see
        log.warning("could not remove the image directory made on the refused host",
                    extra={"resource_name": cmd.hostname, "dir": made_dir, "error": str(exc)})


async def _validated(cmd: RegisterQemuHost, deps: InventoryDeps, probe: QemuHostProbe,
                     creds: Credentials, host_key: str, presented: str,
                     facts: QemuHostFacts) -> ResourceView:
    """The host's record from what was found, or the refusal saying what is missing."""
    try:
        libvirt = await probe.libvirt(cmd.address, cmd.ssh_port, creds, host_key)
    except LibvirtFailure as exc:
        raise await _libvirt_refusal(exc, cmd, creds, host_key, probe) from None
    try:
        qemu = _qemu_capabilities(cmd, facts, libvirt)
    except UnreadableOutput as exc:
        raise InventoryRefusal("probe_failed", f"{cmd.address}: {exc}",
                               hint="the host is not a Linux system labfleet can read") from None

    missing = missing_emulators(cmd.guest_architectures, qemu.guests)
    if missing:
        said = "; ".join(f"{m.arch.value} needs {m.program}" for m in missing)
        raise InventoryRefusal(
            "missing_emulator",
            f"{cmd.hostname} cannot run a declared guest architecture: {said}, which does not "
            "answer `--version` there (or libvirt does not offer it)",
            hint="install QEMU for that architecture on the host (Debian: qemu-system-arm for "
                 "arm and arm64, qemu-system-misc for riscv64, qemu-system-x86 for x86_64) "
                 "and restart libvirtd, or do not declare it",
            field="guest_architectures",
            details={"missing": [{"arch": m.arch.value, "emulator": m.program} for m in missing],
                     "found": [g.model_dump(mode="json") for g in qemu.guests]})
    if not qemu.guests:
        raise InventoryRefusal(
            "missing_emulator", f"no QEMU system emulator answers on {cmd.hostname} (looked "
            "for qemu-system-x86_64, -aarch64, -riscv64 and -arm)",
            hint="install QEMU on the host (Debian: qemu-system-x86, qemu-system-arm, "
                 "qemu-system-misc)", field="guest_architectures")
    if cmd.allocatable_vcpus and cmd.allocatable_vcpus > qemu.cpu_cores:
        raise InventoryRefusal(
            "over_allocation", f"{cmd.allocatable_vcpus} vCPUs may not be given to VMs: the "
            f"host has {qemu.cpu_cores} cores", hint=f"give at most {qemu.cpu_cores}, or leave "
            "it empty for all", field="allocatable_vcpus")
    if cmd.allocatable_memory_mb and cmd.allocatable_memory_mb > qemu.memory_mb:
        raise InventoryRefusal(
            "over_allocation", f"{cmd.allocatable_memory_mb} MB may not be given to VMs: the "
            f"host has {qemu.memory_mb} MB", hint="give less, or leave it empty for the "
            "memory less 1 GiB", field="allocatable_memory_mb")

    view = ResourceView(
        resource_id=uuid.uuid4(), kind=ResourceKind.QEMU_HOST, name=cmd.hostname,
        ssh=SshTarget(address=cmd.address, port=cmd.ssh_port, username=cmd.username,
                      host_key=host_key, host_key_fingerprint=presented),
        architectures=[g.arch for g in qemu.guests], qemu=qemu, labels=dict(cmd.labels),
        lifecycle=Lifecycle.ACTIVE, registered_at=datetime.now(UTC))
    await _store(deps, view, creds, cmd, "register_qemu_host", presented)
    return view


def _qemu_capabilities(cmd: RegisterQemuHost, facts: QemuHostFacts, libvirt: LibvirtFacts
                       ) -> QemuHostCapabilities:
    nproc = facts.nproc.strip()
    if not nproc.isdigit() or int(nproc) < 1:
        raise UnreadableOutput("nproc", facts.nproc)
    mem = parse_meminfo_kb(facts.meminfo)
    if "MemTotal" not in mem:
        raise UnreadableOutput("cat /proc/meminfo", facts.meminfo)
    disk = parse_df(facts.df)
    cores, memory_mb = int(nproc), mem["MemTotal"] // 1024
    vcpus, memory = default_allocatable(cores, memory_mb)
    return QemuHostCapabilities(
        cpu_arch=facts.machine, cpu_cores=cores, memory_mb=memory_mb,
        storage_total_gb=round(disk.total_bytes / GIB, 2),
        storage_free_gb=round(disk.free_bytes / GIB, 2), image_dir=facts.image_dir,
        kvm=facts.kvm, guests=parse_emulators(facts.versions, libvirt.guests),
        libvirt_uri=canonical_uri(cmd.username, cmd.address, cmd.ssh_port),
        libvirt_version=libvirt_version(libvirt.version),
        allocatable_vcpus=cmd.allocatable_vcpus or vcpus,
        allocatable_memory_mb=cmd.allocatable_memory_mb or memory)


async def _libvirt_refusal(exc: LibvirtFailure, cmd: RegisterQemuHost, creds: Credentials,
                           host_key: str, probe: QemuHostProbe) -> InventoryRefusal:
    where = f"{cmd.address}:{cmd.ssh_port}"
    if exc.code == "host_key_changed":
        # SSH just accepted this key: the host changed it between the two connections
        return InventoryRefusal("host_key_changed", f"libvirt over SSH to {where}: {exc.message}",
                                hint="the host key changed during registration; check the host "
                                     "and try again", field="expected_host_key_fingerprint")
    if exc.code == "authentication_failed":
        return InventoryRefusal(
            "authentication_failed", f"SSH accepted the login, but libvirt's SSH transport was "
            f"refused by {where}: {exc.message}",
            hint="libvirt logs in with libssh: use an ed25519/RSA key in OpenSSH format, or "
                 "check that password login is allowed",
            field="private_key" if cmd.private_key else "password")
    if exc.code in ("connection_refused", "unreachable", "timeout"):
        return InventoryRefusal(exc.code, f"libvirt over SSH to {where}: {exc.message}",
                                hint="the host answered SSH a moment ago; check it is still up",
                                field="address")
    try:
        installed, said = await probe.libvirt_diagnosis(cmd.address, cmd.ssh_port, creds,
                                                        host_key)
    except SshError:
        installed, said = True, ""
    if not installed:
        return InventoryRefusal(
            "libvirt_unavailable", f"libvirt is not installed on {cmd.hostname}: no libvirtd or "
            f"virtqemud was found (libvirt over SSH said: {exc.message})",
            hint="install libvirt on the host (Debian: libvirt-daemon-system), start it, and "
                 "let the SSH user reach qemu:///system (group libvirt)",
            details={"libvirt_error": exc.message})
    return InventoryRefusal(
        "libvirt_unavailable", f"libvirt on {cmd.hostname} does not answer: {exc.message}"
        + (f"; the host's own virsh says: {said}" if said else ""),
        hint="start the libvirt daemon on the host (systemctl start libvirtd, or virtqemud) "
             "and check that the SSH user may use qemu:///system (group libvirt)",
        details={"libvirt_error": exc.message, "virsh": said})


async def _store(deps: InventoryDeps, view: ResourceView, creds: Credentials,
                 cmd: RegisterQemuHost, action: str,
                 presented: str) -> None:
    sealed = SealedCredentials(
        password=deps.secrets.seal(creds.password) if creds.password else None,
        private_key=deps.secrets.seal(creds.private_key) if creds.private_key else None)
    async with deps.db.transaction() as tx:
        await deps.resources.add(tx, StoredResource(view, sealed))
        await tx.emit(ResourceRegistered(resource=view))
        await deps.resources.audit(
            tx, actor=cmd.requested_by, action=action, result="ok",
            resource_id=view.resource_id, resource_name=view.name, address=cmd.address,
            port=cmd.ssh_port, username=cmd.username, host_key_fingerprint=presented)


def _unexpected(exc: Exception, cmd: RegisterQemuHost) -> InventoryRefusal:
    log.error("QEMU host registration failed", exc_info=exc, extra={"resource_name": cmd.hostname})
    return InventoryRefusal(
        "internal_error", f"registering {cmd.hostname} failed unexpectedly ({type(exc).__name__})",
        hint="see the inventory's log; nothing was registered, retrying may help")
