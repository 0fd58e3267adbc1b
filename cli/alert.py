"""``labfleet alert ...``: standing alerts, acknowledging, rules and targets (over NATS).

Answered by the alerter service on ``alert.cmd.*``; NATS is found as for ``labfleet health``.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any

import nats
import typer
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from labfleet.shared.events.alert import (
    AcknowledgeAlert,
    AlertListReply,
    AlertReply,
    AlertStatus,
    GetAlert,
    ListAlertRules,
    ListAlerts,
    ListAlertTargets,
    RuleListReply,
    TargetListReply,
)

from .health import resolve_nats_url
from .stack import redact_url

app = typer.Typer(name="alert", help="Alerts raised by the alerter: list, show, acknowledge.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

DataDir = Annotated[Path | None, typer.Option("--data-dir",
                                              help="find NATS from a `labfleet up` on this data dir")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="alert")


def _fail(message: str) -> None:
    typer.echo(f"labfleet alert: {message}", err=True)
    raise typer.Exit(1)


def _ask(data_dir: Path | None, command: Any, reply_type: Any) -> Any:
    url = resolve_nats_url(data_dir)
    if not url:
        _fail("LABFLEET_NATS_URL is not set and no `labfleet up` is running on the data dir")

    async def go() -> Any:
        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False,
                                max_reconnect_attempts=1)
        try:
            msg = await nc.request(command.subject, command.model_dump_json().encode(),
                                   timeout=10)
            return reply_type.model_validate_json(msg.data)
        finally:
            await nc.close()

    try:
        reply = asyncio.run(go())
    except NoRespondersError:
        _fail("the alerter is not running (start it with `labfleet run alerter` or `labfleet up`)")
    except (NatsTimeout, asyncio.TimeoutError):
        _fail("the alerter did not answer within 10 s")
    except (OSError, nats.errors.Error) as exc:
        _fail(f"cannot reach NATS at {redact_url(url)}: {exc or type(exc).__name__}")
    if not reply.ok:
        error = reply.error
        _fail(f"{error.message}" + (f" — {error.hint}" if error.hint else ""))
    return reply


@app.command("list")
def list_(all_: Annotated[bool, typer.Option("--all", help="include resolved alerts")] = False,
          limit: int = 50, data_dir: DataDir = None) -> None:
    """Standing alerts (open and acknowledged), newest first."""
    statuses = [] if all_ else [AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED]
    reply = _ask(data_dir, ListAlerts(statuses=statuses, limit=limit), AlertListReply)
    typer.echo(f"{reply.open_count} standing alert(s)")
    for a in reply.alerts:
        typer.echo(f"{a.alert_id}  {a.severity.value:<8} {a.status.value:<12} x{a.count:<3} "
                   f"{a.last_raised_at:%Y-%m-%d %H:%M:%S}  {a.title}")


@app.command()
def show(alert_id: uuid.UUID, data_dir: DataDir = None) -> None:
    """One alert with its deliveries (attempts, status, last error)."""
    reply = _ask(data_dir, GetAlert(alert_id=alert_id), AlertReply)
    typer.echo(reply.alert.model_dump_json(indent=2))
    for d in reply.deliveries:
        typer.echo(f"delivery {d.delivery_id}: {d.kind.value} {d.target_name} {d.event} "
                   f"{d.status} after {d.attempts} attempt(s)"
                   + (f"; last error: {d.last_error}" if d.last_error else ""))


@app.command("ack")
def acknowledge(alert_id: uuid.UUID,
                by: Annotated[str, typer.Option(help="who acknowledges")] = "cli",
                data_dir: DataDir = None) -> None:
    """Acknowledge an alert: someone is on it (it still resolves by itself)."""
    reply = _ask(data_dir, AcknowledgeAlert(alert_id=alert_id, by=by), AlertReply)
    typer.echo(f"{reply.alert.alert_id}: {reply.alert.status.value}")


@app.command()
def rules(data_dir: DataDir = None) -> None:
    """The alert rules (edit them with /api/v1/alert-rules)."""
    for r in _ask(data_dir, ListAlertRules(), RuleListReply).rules:
        typer.echo(f"{r.rule_id}  {'on ' if r.enabled else 'off'}  {r.name}: "
                   f"{', '.join(c.value for c in r.conditions) or 'any condition'}"
                   f" ≥{r.min_severity.value}"
                   + (f" kind={r.resource_kind}" if r.resource_kind else "")
                   + (f" labels={r.labels}" if r.labels else "")
                   + (f" → {', '.join(r.targets)}" if r.targets else " → dashboard"))


@app.command()
def targets(data_dir: DataDir = None) -> None:
    """Notification targets (secrets are never shown)."""
    for t in _ask(data_dir, ListAlertTargets(), TargetListReply).targets:
        where = ", ".join(t.addresses) if t.kind.value == "email" else t.url
        typer.echo(f"{t.target_id}  {t.kind.value:<7} {t.name}: {where}"
                   + (" (signed)" if t.has_secret else ""))
