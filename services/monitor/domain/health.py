"""A host's health as a small state machine over poll outcomes.

* a good poll → ``online``, or ``degraded`` when a threshold is crossed (free disk of the
  work area under ``disk_warning_gb``), with the warnings saying which;
* ``offline_after_failures`` failed polls in a row → ``offline``; fewer leave the status
  as it was (one lost poll is not an outage) — the last good sample and its time stay;
* a host presenting another host key than the one pinned → ``offline`` at once, with the
  reason starting ``host_key_changed`` (possible interception: never retried quietly);
* a resource in maintenance is ``maintenance`` whatever its polls say.

Only a change of status is a transition (``HealthChanged``); the caller persists the
state whenever :func:`worth_saving` says an observer would see a difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from labfleet.shared.events.health import HealthStatus, HostSample
from labfleet.shared.events.resource import ResourceKind


#: the failure code (and reason prefix) of a host whose key no longer matches the pinned one
HOST_KEY_CHANGED = "host_key_changed"


@dataclass(frozen=True)
class HealthPolicy:
    offline_after_failures: int = 2
    disk_warning_gb: float = 10.0
    #: QEMU hosts: CPU, memory or image storage use above this → degraded (no new VMs)
    utilization_warning_pct: float = 85.0


@dataclass(frozen=True)
class HealthState:
    status: HealthStatus = HealthStatus.UNKNOWN
    reason: str = ""
    since: datetime | None = None
    last_seen: datetime | None = None
    warnings: tuple[str, ...] = ()
    consecutive_failures: int = 0
    last_sample: HostSample | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PollSucceeded:
    sample: HostSample


@dataclass(frozen=True)
class PollFailed:
    at: datetime
    code: str
    message: str


PollOutcome = PollSucceeded | PollFailed


def utilization(sample: HostSample) -> dict[str, float]:
    """Use of each resource in percent: ``cpu``, ``memory``, ``storage``."""
    out = {"cpu": sample.cpu_pct}
    if sample.mem_total_mb:
        out["memory"] = 100.0 * sample.mem_used_mb / sample.mem_total_mb
    if sample.disk_total_gb:
        out["storage"] = 100.0 * (sample.disk_total_gb - sample.disk_free_gb) / sample.disk_total_gb
    return out


def utilization_warnings(sample: HostSample, limit: float) -> list[str]:
    return [f"{name}_high: {name} use {value:.1f} % is over the {limit:g} % limit"
            for name, value in utilization(sample).items() if value > limit]


def warnings_for(sample: HostSample, policy: HealthPolicy) -> tuple[str, ...]:
    out: list[str] = []
    if sample.kind is ResourceKind.QEMU_HOST:
        # a QEMU host's image storage is judged by its share used, like CPU and memory
        return tuple(utilization_warnings(sample, policy.utilization_warning_pct))
    if sample.disk_free_gb < policy.disk_warning_gb:
        out.append(f"disk_low: {sample.disk_free_gb:.1f} GB free in the work area, under the "
                   f"{policy.disk_warning_gb:g} GB threshold")
    return tuple(out)


def judge(state: HealthState, outcome: PollOutcome, policy: HealthPolicy, *,
          in_maintenance: bool = False) -> HealthState:
    """The state after ``outcome``; compare ``.status`` with the old one for a transition."""
    if isinstance(outcome, PollSucceeded):
        sample = outcome.sample
        warnings = warnings_for(sample, policy)
        status = HealthStatus.DEGRADED if warnings else HealthStatus.ONLINE
        reason = "; ".join(warnings) if warnings else "answering polls"
        new = replace(state, last_seen=sample.at, last_sample=sample, warnings=warnings,
                      consecutive_failures=0, status=status, reason=reason)
        at = sample.at
    else:
        failures = state.consecutive_failures + 1
        new = replace(state, consecutive_failures=failures)
        at = outcome.at
        if outcome.code == HOST_KEY_CHANGED:
            new = replace(new, status=HealthStatus.OFFLINE,
                          reason=f"{HOST_KEY_CHANGED}: {outcome.message}")
        elif failures >= policy.offline_after_failures:
            new = replace(new, status=HealthStatus.OFFLINE,
                          reason=f"{failures} polls failed in a row; last ({outcome.code}): "
                                 f"{outcome.message}")
        elif state.status is HealthStatus.UNKNOWN:
            new = replace(new, reason=outcome.message)
    if in_maintenance:
        new = replace(new, status=HealthStatus.MAINTENANCE, reason="in maintenance")
    if new.status is not state.status:
        new = replace(new, since=at)
    return new


def worth_saving(old: HealthState, new: HealthState) -> bool:
    """Did anything a dashboard shows change (not merely ``last_seen``)?"""
    return (old.status, old.warnings, old.consecutive_failures, old.reason) != \
        (new.status, new.warnings, new.consecutive_failures, new.reason)
