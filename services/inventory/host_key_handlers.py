"""A host's key, checked and accepted on an admin's word: one function per command.

A host presenting another key than the one pinned at registration is refused by every
service that logs in to it (the monitor reports ``host_key_changed``).  When the admin
knows why (the host was reinstalled), they look at the presented key's fingerprint
(:func:`check_host_key`) and accept exactly that one (:func:`accept_host_key`): the
inventory asks the host again, and pins its key only if the fingerprint is still the
one the admin accepted.  The change goes out as ``resource.updated`` (the monitor,
builder and deployer log in afresh with the new pin) with an audit row naming who and
both fingerprints.
"""
from __future__ import annotations

import logging
import re

from labfleet.shared.events.resource import (
    AcceptHostKey,
    CheckHostKey,
    HostKeyReply,
    ResourceUpdated,
    ResourceView,
)
from labfleet.shared.ssh import SshError, fingerprint, probe_host_key

from .domain.errors import InventoryRefusal, not_found
from .handlers import InventoryDeps, _audit_safely, normalise_fingerprint

log = logging.getLogger(__name__)

#: what ``ssh-keygen -l`` prints for a key: SHA256 and 43 characters of unpadded base64
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


async def _presented(view: ResourceView, deps: InventoryDeps) -> str:
    """The key line the host presents now (a key of the pinned type first)."""
    return await probe_host_key(view.ssh.address, view.ssh.port, deps.probe.connect_timeout,
                                like=view.ssh.host_key)


def _unreachable(view: ResourceView, exc: SshError) -> InventoryRefusal:
    return InventoryRefusal(exc.code, f"could not ask {view.name} for its host key: "
                            f"{exc.message}", hint=exc.hint)


def _pinned(view: ResourceView) -> str | None:
    if view.ssh.host_key_fingerprint:
        return view.ssh.host_key_fingerprint
    return fingerprint(view.ssh.host_key) if view.ssh.host_key else None


async def check_host_key(cmd: CheckHostKey, deps: InventoryDeps) -> HostKeyReply:
    view = await deps.resources.get(cmd.resource_id)
    if view is None:
        return HostKeyReply(ok=False, error=not_found(cmd.resource_id).as_error())
    try:
        presented = fingerprint(await _presented(view, deps))
    except SshError as exc:
        return HostKeyReply(ok=False, error=_unreachable(view, exc).as_error())
    pinned = _pinned(view)
    return HostKeyReply(ok=True, resource=view, pinned_fingerprint=pinned,
                        presented_fingerprint=presented, matches=presented == pinned)


async def accept_host_key(cmd: AcceptHostKey, deps: InventoryDeps) -> HostKeyReply:
    accepted = normalise_fingerprint(cmd.fingerprint) or ""
    if not FINGERPRINT.fullmatch(accepted):
        return HostKeyReply(ok=False, error=InventoryRefusal(
            "invalid_fingerprint", f"{cmd.fingerprint[:80]!r} is no SHA256 fingerprint",
            hint="give the fingerprint as the host-key check shows it: SHA256: and 43 "
                 "characters", field="fingerprint").as_error())
    view = await deps.resources.get(cmd.resource_id)
    if view is None:
        return HostKeyReply(ok=False, error=not_found(cmd.resource_id).as_error())
    try:
        key_line = await _presented(view, deps)
    except SshError as exc:
        refusal = _unreachable(view, exc)
        await _audit_safely(deps, cmd.requested_by, "accept_host_key", refusal.code,
                            view.resource_id, view.name, accepted=accepted)
        return HostKeyReply(ok=False, error=refusal.as_error())
    presented = fingerprint(key_line)
    old = _pinned(view)
    if presented != accepted:
        refusal = InventoryRefusal(
            "host_key_conflict",
            f"{view.name} presents the host key {presented}, not the {accepted} you accepted; "
            "nothing was changed",
            hint="check the host key again and accept the fingerprint it shows now — if it "
                 "changed since you looked, find out why before accepting",
            field="fingerprint",
            details={"presented": presented, "accepted": accepted, "pinned": old})
        await _audit_safely(deps, cmd.requested_by, "accept_host_key", refusal.code,
                            view.resource_id, view.name, pinned=old, presented=presented,
                            accepted=accepted)
        return HostKeyReply(ok=False, error=refusal.as_error(), resource=view,
                            pinned_fingerprint=old, presented_fingerprint=presented,
                            matches=presented == old)
    async with deps.db.transaction() as tx:
        locked = await deps.resources.lock(tx, view.resource_id)
        if locked is None:
            return HostKeyReply(ok=False, error=not_found(cmd.resource_id).as_error())
        updated = await deps.resources.set_host_key(tx, view.resource_id, key_line, presented)
        await tx.emit(ResourceUpdated(resource=updated))
        await deps.resources.audit(
            tx, actor=cmd.requested_by, action="accept_host_key", result="ok",
            resource_id=updated.resource_id, resource_name=updated.name,
            old_fingerprint=_pinned(locked), new_fingerprint=presented)
    log.warning("host key accepted", extra={
        "resource_id": str(updated.resource_id), "resource_name": updated.name,
        "by": cmd.requested_by, "old_fingerprint": _pinned(locked),
        "new_fingerprint": presented})
    return HostKeyReply(ok=True, resource=updated, pinned_fingerprint=presented,
                        presented_fingerprint=presented, matches=True, accepted=True,
                        previous_fingerprint=_pinned(locked))
