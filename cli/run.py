"""``labfleet run <service>`` and ``labfleet services``.

``run`` starts one service in the foreground, configured by ``LABFLEET_*`` variables; it is
the entrypoint of every container and of every process ``labfleet up`` supervises.
"""
from __future__ import annotations

from typing import Annotated

import typer

from labfleet.shared.service import run_service
from labfleet.shared.settings import load_settings

from .registry import SERVICE_NAMES, UnknownService, load_all, load_service


def run(
    service: Annotated[str, typer.Argument(
        help=f"one of: {', '.join(SERVICE_NAMES)}", show_default=False)],
) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM."""
    try:
        entry = load_service(service)
    except UnknownService as exc:
        typer.echo(f"labfleet run: {exc}", err=True)
        raise typer.Exit(2) from None
    if entry.factory is None:
        typer.echo(f"labfleet run: cannot start {service}: {entry.problem}", err=True)
        raise typer.Exit(2)
    settings = load_settings()
    missing = [problem for problem in (_missing(settings.require_nats),
                                       _missing(settings.require_database),
                                       _missing(settings.s3_config)) if problem]
    if missing:
        for problem in missing:
            typer.echo(f"labfleet run {service}: {problem}", err=True)
        raise typer.Exit(2)
    run_service(service, entry.factory, settings)


def _missing(require: object) -> str | None:
    try:
        require()  # type: ignore[operator]
    except RuntimeError as exc:
        return str(exc)
    return None


def services() -> None:
    """List the services and whether each can be started here."""
    for entry in load_all():
        state = "available" if entry.available else f"unavailable: {entry.problem}"
        typer.echo(f"{entry.name:<10} {state}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(services)
