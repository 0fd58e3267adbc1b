"""Maintenance windows and decommissioning, as pure decisions over a resource's state.

A window without a start begins now; one without an end lasts until lifted.  A resource
is in maintenance exactly while ``now`` is inside its window; after the end it is active
again and the window is forgotten.  Retired is final (the resource is removed).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from labfleet.shared.events.resource import Lifecycle, MaintenanceWindow

from .errors import InventoryRefusal


def check_window(window: MaintenanceWindow, now: datetime) -> None:
    if window.start and window.end and window.end <= window.start:
        raise InventoryRefusal(
            "invalid_window", f"the maintenance window ends ({window.end.isoformat()}) before "
            f"it starts ({window.start.isoformat()})",
            hint="give an end after the start", field="end")
    if window.end and window.end <= now:
        raise InventoryRefusal(
            "invalid_window", f"the maintenance window's end {window.end.isoformat()} is "
            "already past", hint="give an end in the future, or none to last until lifted",
            field="end")


@dataclass(frozen=True)
class LifecycleState:
    lifecycle: Lifecycle
    maintenance: MaintenanceWindow | None


def state_at(window: MaintenanceWindow | None, now: datetime) -> LifecycleState:
    """What a resource with this window is at ``now``."""
    if window is None:
        return LifecycleState(Lifecycle.ACTIVE, None)
    if window.end is not None and window.end <= now:
        return LifecycleState(Lifecycle.ACTIVE, None)  # over: forget it
    if window.start is not None and window.start > now:
        return LifecycleState(Lifecycle.ACTIVE, window)  # upcoming
    return LifecycleState(Lifecycle.MAINTENANCE, window)


def active_work_refusal(name: str, builds: list[str]) -> InventoryRefusal:
    shown = ", ".join(builds[:5]) + (f" and {len(builds) - 5} more" if len(builds) > 5 else "")
    return InventoryRefusal(
        "active_builds",
        f"{name} still has {len(builds)} active build{'s' if len(builds) != 1 else ''} "
        f"({shown}); decommissioning now would kill them",
        hint="put the server in maintenance and wait for them to finish, cancel them, or "
             "decommission with force",
        field="force", details={"builds": builds})
