"""One function per inventory command; dependencies come in as :class:`InventoryDeps`.

Handlers return replies and never raise for a refusal: a person waits on the other end of
every command and must learn what went wrong and what to do.  Each registration attempt
leaves an audit row (who, what, result) whether it succeeded or not; secrets never reach
the audit row, the log or an event.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncssh
from labfleet.shared.bus import Bus
from labfleet.shared.db import Database
from labfleet.shared.events.resource import (
    Arch,
    BuildServerCapabilities,
    CredentialsReply,
    GetCredentials,
    GetResource,
    Lifecycle,
    ListResources,
    RegisterBuildServer,
    RegisterQemuHost,
    RegistrationReply,
    RemoveResource,
    ResourceKind,
    ResourceListReply,
    ResourceRegistered,
    ResourceRemoved,
    ResourceReply,
    ResourceView,
    SshTarget,
)
from labfleet.shared.secrets import CredentialKeyMissing, SecretBox
from labfleet.shared.ssh import Credentials, RemoteCommandFailed, SshError, fingerprint
from pydantic import SecretStr

from .adapters.detection import BuildServerProbe, compile_failures
from .adapters.repository import ResourceRepository, SealedCredentials, StoredResource
from .domain.capabilities import UnreadableOutput, build_capabilities
from .domain.errors import InventoryRefusal, not_found
from .domain.readiness import broken_toolchain_refusal, check_disk, check_tools
from .domain.toolchains import missing_toolchains

log = logging.getLogger(__name__)


@dataclass
class InventoryDeps:
    db: Database
    resources: ResourceRepository
    secrets: SecretBox
    probe: BuildServerProbe
    #: a build server with less free disk is refused (LABFLEET_BUILD_MIN_DISK_GB)
    min_disk_gb: float = 5.0
    #: the bus, to ask the builder about active builds before decommissioning
    bus: Bus | None = None


# ---- registration -------------------------------------------------------------------


async def register_build_server(cmd: RegisterBuildServer, deps: InventoryDeps) -> RegistrationReply:
    attempt = {"address": cmd.address, "port": cmd.ssh_port, "username": cmd.username,
               "auth": "private_key" if cmd.private_key else "password",
               "architectures": [a.value for a in cmd.architectures]}
    try:
        view = await _register_build_server(cmd, deps)
    except Exception as exc:  # noqa: BLE001 - every failure is owed an answer and an audit row
        refusal = exc if isinstance(exc, InventoryRefusal) else _unexpected(exc, cmd)
        log.info("build server registration refused",
                 extra={"resource_name": cmd.hostname, "code": refusal.code, **attempt})
        await _audit_safely(deps, cmd.requested_by, "register_build_server", refusal.code,
                            None, cmd.hostname, message=refusal.message, **attempt)
        return RegistrationReply(ok=False, error=refusal.as_error())
    log.info("build server registered",
             extra={"resource_name": view.name, "resource_id": str(view.resource_id), **attempt})
    return RegistrationReply(ok=True, resource=view)


async def _register_build_server(cmd: RegisterBuildServer, deps: InventoryDeps) -> ResourceView:
    creds = _login(cmd)
    await deps.resources.check_free(ResourceKind.BUILD_SERVER, cmd.hostname, cmd.address,
                                    cmd.ssh_port)
    try:
        host_key, presented = await _pinned_host_key(cmd, deps.probe)
        facts = await deps.probe.facts(cmd.address, cmd.ssh_port, creds, host_key, cmd.work_dir)
        capabilities = build_capabilities(facts)
    except SshError as exc:
        raise _refusal_from_ssh(exc, cmd) from None
    except UnreadableOutput as exc:
        raise InventoryRefusal("probe_failed", f"{cmd.address}: {exc}",
                               hint="the host is not a Linux system labfleet can read") from None

    declared = list(cmd.architectures) or [t.arch for t in capabilities.toolchains]
    if not declared:
        raise InventoryRefusal(
            "missing_toolchain",
            f"no compiler answers `--version` on {cmd.hostname} (looked for gcc and the "
            "aarch64, riscv64 and arm cross compilers), so it cannot build anything",
            hint="install gcc or a cross compiler on the host", field="architectures")
    missing = missing_toolchains(declared, capabilities.machine, capabilities.toolchains)
    if missing:
        said = "; ".join(f"{m.arch.value} needs {' or '.join(m.compilers)}" for m in missing)
        raise InventoryRefusal(
            "missing_toolchain",
            f"{cmd.hostname} lacks the toolchain for a declared architecture: {said}, and "
            "none answers `--version` there",
            hint="install the cross compiler on the host (Debian: gcc-<triplet>, e.g. "
                 "gcc-riscv64-linux-gnu) or do not declare that architecture",
            field="architectures",
            details={"missing": [{"arch": m.arch.value, "compilers": list(m.compilers)}
                                 for m in missing],
                     "found": [t.model_dump() for t in capabilities.toolchains]})
    check_tools(cmd.hostname, capabilities, cmd.build_configs)
    check_disk(cmd.hostname, capabilities, deps.min_disk_gb)
    await _check_compiles(cmd, deps, creds, host_key, capabilities, declared)

    view = ResourceView(
        resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=cmd.hostname,
        ssh=SshTarget(address=cmd.address, port=cmd.ssh_port, username=cmd.username,
                      host_key=host_key, host_key_fingerprint=presented),
        architectures=declared, build_configs=list(cmd.build_configs),
        capabilities=capabilities, labels=dict(cmd.labels), lifecycle=Lifecycle.ACTIVE,
        registered_at=datetime.now(UTC))
    sealed = SealedCredentials(
        password=deps.secrets.seal(creds.password) if creds.password else None,
        private_key=deps.secrets.seal(creds.private_key) if creds.private_key else None)
    async with deps.db.transaction() as tx:
        await deps.resources.add(tx, StoredResource(view, sealed))
        await tx.emit(ResourceRegistered(resource=view))
        await deps.resources.audit(
            tx, actor=cmd.requested_by, action="register_build_server", result="ok",
            resource_id=view.resource_id, resource_name=view.name, address=cmd.address,
            port=cmd.ssh_port, username=cmd.username, host_key_fingerprint=presented)
    return view


async def _check_compiles(cmd: RegisterBuildServer, deps: InventoryDeps, creds: Credentials,
                          host_key: str, capabilities: BuildServerCapabilities,
                          declared: list[Arch]) -> None:
    compiler_of = {t.arch: t.compiler for t in capabilities.toolchains if t.arch in declared}
    try:
        failed = await compile_failures(
            (cmd.address, cmd.ssh_port, creds, host_key), sorted(set(compiler_of.values())),
            connect_timeout=deps.probe.connect_timeout,
            command_timeout=deps.probe.command_timeout)
    except SshError as exc:
        raise _refusal_from_ssh(exc, cmd) from None
    broken = {arch.value: (compiler, failed[compiler])
              for arch, compiler in compiler_of.items() if compiler in failed}
    if broken:
        raise broken_toolchain_refusal(cmd.hostname, broken)


def _unexpected(exc: Exception, cmd: RegisterBuildServer) -> InventoryRefusal:
    log.error("build server registration failed", exc_info=exc,
              extra={"resource_name": cmd.hostname})
    return InventoryRefusal(
        "internal_error", f"registering {cmd.hostname} failed unexpectedly ({type(exc).__name__})",
        hint="see the inventory's log; nothing was registered, retrying may help")


def _login(cmd: RegisterBuildServer) -> Credentials:
    password = cmd.password.get_secret_value() if cmd.password else None
    key = cmd.private_key.get_secret_value() if cmd.private_key else None
    if not password and not key:
        raise InventoryRefusal("missing_credentials",
                               "give a password or a private key for the SSH user",
                               hint="a private key (OpenSSH or PEM text) is preferred",
                               field="password")
    if key:
        try:
            asyncssh.import_private_key(key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise InventoryRefusal(
                "invalid_private_key", f"the private key could not be read: {exc}",
                hint="paste the whole private key file (-----BEGIN ... -----END ...); keys "
                     "protected by a passphrase are not supported",
                field="private_key") from None
    return Credentials(cmd.username, password=password, private_key=key)


class _HostKeyProbe(Protocol):
    async def host_key(self, address: str, port: int) -> str: ...


async def _pinned_host_key(cmd: RegisterBuildServer | RegisterQemuHost,
                           probe: _HostKeyProbe) -> tuple[str, str]:
    """The key the host presents and its fingerprint, refused when it is not the one the
    admin said to expect."""
    host_key = await probe.host_key(cmd.address, cmd.ssh_port)
    presented = fingerprint(host_key)
    expected = normalise_fingerprint(cmd.expected_host_key_fingerprint)
    if expected and expected != presented:
        raise InventoryRefusal(
            "host_key_changed",
            f"the host key of {cmd.address}:{cmd.ssh_port} is {presented}, not the "
            f"{expected} that was accepted",
            hint="if the host was reinstalled, check the presented fingerprint on the host "
                 "itself and give that one as the expected fingerprint; otherwise treat "
                 "this as a possible interception and investigate",
            field="expected_host_key_fingerprint",
            details={"presented": presented, "expected": expected})
    return host_key, presented


def normalise_fingerprint(value: str | None) -> str | None:
    if not value or not value.strip():
        return None
    value = value.strip()
    return f"SHA256:{value[7:]}" if value.upper().startswith("SHA256:") else f"SHA256:{value}"


_FIELD_OF_SSH_ERROR = {
    "unreachable": "address",
    "timeout": "address",
    "connection_refused": "ssh_port",
    "not_ssh": "ssh_port",
    "host_key_changed": "expected_host_key_fingerprint",
}


def _refusal_from_ssh(exc: SshError, cmd: RegisterBuildServer) -> InventoryRefusal:
    if isinstance(exc, RemoteCommandFailed):
        return InventoryRefusal(
            "probe_failed", exc.message,
            hint="the host accepted the login but a basic command failed; check the "
                 "user's shell and PATH")
    field = _FIELD_OF_SSH_ERROR.get(exc.code)
    if exc.code == "authentication_failed":
        field = "private_key" if cmd.private_key else "password"
    return InventoryRefusal(exc.code, exc.message, hint=exc.hint, field=field)


async def _audit_safely(deps: InventoryDeps, actor: str, action: str, result: str,
                        resource_id: uuid.UUID | None, name: str | None, **detail: object) -> None:
    try:
        await deps.resources.audit(deps.db, actor=actor, action=action, result=result,
                                   resource_id=resource_id, resource_name=name, **detail)
    except Exception:  # the reply still tells the admin; the audit gap is logged
        log.exception("could not write the audit row", extra={"action": action})


# ---- reading ------------------------------------------------------------------------


async def get_resource(cmd: GetResource, deps: InventoryDeps) -> ResourceReply:
    view = await deps.resources.get(cmd.resource_id)
    if view is None:
        return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
    return ResourceReply(ok=True, resource=view)


async def list_resources(cmd: ListResources, deps: InventoryDeps) -> ResourceListReply:
    return ResourceListReply(ok=True, resources=await deps.resources.list(cmd.kind))


async def get_credentials(cmd: GetCredentials, deps: InventoryDeps) -> CredentialsReply:
    stored = await deps.resources.sealed_credentials(cmd.resource_id)
    if stored is None:
        return CredentialsReply(ok=False, error=not_found(cmd.resource_id).as_error())
    try:
        password = deps.secrets.open(stored.credentials.password) \
            if stored.credentials.password else None
        key = deps.secrets.open(stored.credentials.private_key) \
            if stored.credentials.private_key else None
    except CredentialKeyMissing as exc:
        return CredentialsReply(ok=False, error=InventoryRefusal(
            "credential_key_changed", str(exc),
            hint="restore the previous LABFLEET_CREDENTIAL_KEY or re-register the resource"
        ).as_error())
    return CredentialsReply(ok=True, resource=stored.view,
                            password=SecretStr(password) if password else None,
                            private_key=SecretStr(key) if key else None)


# ---- removal ------------------------------------------------------------------------


async def remove_resource(cmd: RemoveResource, deps: InventoryDeps) -> ResourceReply:
    async with deps.db.transaction() as tx:
        view = await deps.resources.remove(tx, cmd.resource_id)
        if view is not None:
            await tx.emit(ResourceRemoved(resource_id=view.resource_id, kind=view.kind))
            await deps.resources.audit(tx, actor=cmd.requested_by, action="remove",
                                       result="ok", resource_id=view.resource_id,
                                       resource_name=view.name)
    if view is None:
        await _audit_safely(deps, cmd.requested_by, "remove", "not_found", cmd.resource_id, None)
        return ResourceReply(ok=False, error=not_found(cmd.resource_id).as_error())
    log.info("resource removed", extra={"resource_id": str(view.resource_id),
                                        "resource_name": view.name})
    return ResourceReply(ok=True, resource=view)
