"""From a fact on the bus to the conditions it raises or clears.

A :class:`Signal` says "this condition now holds for this subject" (``raised``) or "it no
longer does" (a clear).  Which alerts that makes is the rules' business, not this room's.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from labfleet.shared.events.alert import AlertCondition, Severity, SubjectType
from labfleet.shared.events.build import BuildFailed, BuildRejected
from labfleet.shared.events.deploy import BootFailed
from labfleet.shared.events.health import HealthChanged, HealthStatus

#: the conditions a host answering again puts an end to
REACHABILITY = (AlertCondition.HOST_UNREACHABLE, AlertCondition.HOST_KEY_CHANGED)


@dataclass(frozen=True)
class Signal:
    condition: AlertCondition
    subject_type: SubjectType
    subject_id: uuid.UUID
    raised: bool
    occurred_at: datetime
    severity: Severity = Severity.WARNING
    title: str = ""
    detail: str = ""
    resource_id: uuid.UUID | None = None
    resource_kind: str | None = None
    #: for a clear: why the condition ended, shown on the resolved alert
    resolution: str = ""


def _name(name: str | None, resource_id: uuid.UUID) -> str:
    return name or f"resource {str(resource_id)[:8]}"


def health_signals(event: HealthChanged, name: str | None = None) -> list[Signal]:
    """Offline → unreachable (or host key changed); degraded with low disk → disk low;
    a host answering again clears what its silence raised."""
    rid, kind, at = event.resource_id, event.kind.value, event.occurred_at
    who = _name(name, rid)

    def raise_(condition: AlertCondition, severity: Severity, title: str) -> Signal:
        return Signal(condition, SubjectType.RESOURCE, rid, True, at, severity, title,
                      event.reason, rid, kind)

    def clear(condition: AlertCondition, why: str) -> Signal:
        return Signal(condition, SubjectType.RESOURCE, rid, False, at, resource_id=rid,
                      resource_kind=kind, resolution=why)

    if event.status is HealthStatus.OFFLINE:
        if "host_key_changed" in event.reason:
            return [raise_(AlertCondition.HOST_KEY_CHANGED, Severity.CRITICAL,
                           f"{who}: SSH host key changed — connections refused")]
        return [raise_(AlertCondition.HOST_UNREACHABLE, Severity.CRITICAL,
                       f"{who} is unreachable")]
    if event.status is HealthStatus.ONLINE:
        return [clear(c, f"{who} is online again") for c in REACHABILITY] + [
            clear(AlertCondition.DISK_LOW, f"{who} has enough free disk again")]
    if event.status is HealthStatus.DEGRADED:
        out = [clear(c, f"{who} answers again") for c in REACHABILITY]
        disk = [w for w in event.warnings if w.startswith("disk_low")]
        if disk:
            out.append(Signal(AlertCondition.DISK_LOW, SubjectType.RESOURCE, rid, True, at,
                              Severity.WARNING, f"{who}: disk low", "; ".join(disk), rid, kind))
        else:
            out.append(clear(AlertCondition.DISK_LOW, f"{who} has enough free disk again"))
        return out
    if event.status is HealthStatus.MAINTENANCE:
        return [clear(c, f"{who} was put in maintenance") for c in REACHABILITY]
    return []


def build_failed_signal(event: BuildFailed, server_name: str | None = None) -> Signal:
    where = f" on {server_name}" if server_name else ""
    detail = event.error.message + (f" — {event.error.hint}" if event.error.hint else "")
    if event.retryable:
        detail += (f" (attempt {event.attempt}); recovery is being attempted on another "
                   "server")
    return Signal(AlertCondition.BUILD_FAILED, SubjectType.BUILD, event.build_id, True,
                  event.occurred_at, Severity.WARNING,
                  f"build {str(event.build_id)[:8]} failed{where}: {event.error.code}", detail,
                  event.server_id, "build_server" if event.server_id else None)


def build_rejected_signal(event: BuildRejected) -> Signal:
    detail = event.error.message + (f" — {event.error.hint}" if event.error.hint else "")
    return Signal(AlertCondition.BUILD_REJECTED, SubjectType.BUILD, event.build_id, True,
                  event.occurred_at, Severity.CRITICAL,
                  f"build {str(event.build_id)[:8]} cannot be placed: {event.error.code}",
                  detail)


def build_recovered_signal(build_id: uuid.UUID, at: datetime) -> Signal:
    return Signal(AlertCondition.BUILD_FAILED, SubjectType.BUILD, build_id, False, at,
                  resolution="a later attempt of the build succeeded")


def boot_failed_signal(event: BootFailed, host_name: str | None = None) -> Signal:
    where = f" on {host_name}" if host_name else ""
    return Signal(AlertCondition.BOOT_FAILED, SubjectType.ENVIRONMENT, event.env_id, True,
                  event.occurred_at, Severity.WARNING,
                  f"environment {str(event.env_id)[:8]} did not boot{where}: {event.kind.value}",
                  event.error.message, event.host_id, "qemu_host" if event.host_id else None)


def boot_verified_signal(env_id: uuid.UUID, at: datetime) -> Signal:
    return Signal(AlertCondition.BOOT_FAILED, SubjectType.ENVIRONMENT, env_id, False, at,
                  resolution="a later deployment booted")
