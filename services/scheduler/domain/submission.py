"""Whether a build request can be accepted, and if not, an error a developer can act on."""
from __future__ import annotations

from collections.abc import Sequence

from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HealthStatus
from labfleet.shared.events.resource import Lifecycle

from .placement import Decision, Outcome, PlacementPolicy
from .servers import BuildServerState, availability_problems, capability_problems


class Rejection(Exception):
    def __init__(self, error: ErrorInfo, alternatives: Sequence[str] = ()) -> None:
        super().__init__(error.message)
        self.error = error
        self.alternatives = list(alternatives)


def resolve_server(ref: str, pool: Sequence[BuildServerState]) -> BuildServerState:
    """The server ``ref`` names (id or name); raises :class:`Rejection` when none or several."""
    by_id = [s for s in pool if str(s.server_id) == ref]
    found = by_id or [s for s in pool if s.name.lower() == ref.strip().lower()]
    if not found:
        names = ", ".join(sorted(s.name for s in pool)) or "none registered"
        raise Rejection(ErrorInfo(
            code="unknown_server", field="server",
            message=f"no build server has the id or name {ref!r}",
            hint=f"pick one of the registered build servers ({names}) or leave it empty "
                 "(Auto)"))
    if len(found) > 1:
        raise Rejection(ErrorInfo(
            code="ambiguous_server", field="server",
            message=f"{len(found)} build servers are named {ref!r}",
            hint="give the server's id instead of its name",
            details={"ids": [str(s.server_id) for s in found]}))
    return found[0]


def check_submission(spec: BuildSpec, pool: Sequence[BuildServerState], decision: Decision,
                     policy: PlacementPolicy) -> BuildServerState | None:
    """Validate ``spec`` against the pool; returns the pinned server (None for Auto).

    Raises :class:`Rejection` with the reason and, for a pinned server that cannot take
    the build, the servers that could (``alternatives``).
    """
    alternatives = decision.alternatives
    if spec.server is None:
        if decision.outcome == Outcome.NO_CAPABLE_SERVER:
            have = sorted({a for s in pool for a in s.toolchains if s.supports(a)})
            raise Rejection(ErrorInfo(
                code="no_capable_server", field="arch",
                message=decision.reason,
                hint=("the pool builds for: " + ", ".join(have)) if have else
                     "register a build server with the toolchain first",
                details={"arch": spec.arch.value, "labels": spec.labels}))
        return None
    try:
        server = resolve_server(spec.server, pool)
    except Rejection as rejection:
        raise Rejection(rejection.error, alternatives) from None
    static = capability_problems(spec, server)
    if static:
        code = "toolchain_missing" if spec.arch not in server.toolchains or (
            server.declared and spec.arch not in server.declared) else "labels_mismatch"
        raise Rejection(ErrorInfo(
            code=code, field="server",
            message=f"build server {server.name} cannot build this: {'; '.join(static)}",
            hint=_hint(alternatives), details={"alternatives": list(alternatives)}),
            alternatives)
    unavailable = availability_problems(server, policy.min_free_disk_gb, policy.disk_warning_gb)
    if unavailable:
        raise Rejection(ErrorInfo(
            code=_availability_code(server, policy),
            field="server",
            message=f"build server {server.name} cannot take builds now: "
                    f"{'; '.join(unavailable)}",
            hint=_hint(alternatives), details={"alternatives": list(alternatives)}),
            alternatives)
    return server


def _availability_code(server: BuildServerState, policy: PlacementPolicy) -> str:
    if server.lifecycle == Lifecycle.MAINTENANCE:
        return "server_in_maintenance"
    if server.lifecycle != Lifecycle.ACTIVE:
        return "server_retired"
    if server.health == HealthStatus.OFFLINE:
        return "server_offline"
    if server.health not in (HealthStatus.ONLINE, HealthStatus.DEGRADED):
        return "server_not_ready"
    return "server_disk_low"


def _hint(alternatives: Sequence[str]) -> str:
    if alternatives:
        return "these servers can build it: " + ", ".join(alternatives)
    return "no other server can build it now; choose Auto to wait in the queue"
