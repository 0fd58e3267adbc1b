"""The ``labfleet`` command.

Each module named in ``COMMAND_MODULES`` adds its commands or sub-command group to the
app through ``register(app)``; a new group (``labfleet lab ...``) is one module and one
line here.
"""
from __future__ import annotations

import importlib

import typer

#: modules of ``labfleet.cli`` that each expose ``register(app: typer.Typer) -> None``
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "up",
    "health",
    "lab",
    "env",
    "alert",
    "build_servers",
    "qemu_host",
    "builds",
    "artifacts",
    "nats_identities",
    "resources",
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="labfleet",
        help="Run and manage a kernel / BSP test lab: build servers, QEMU hosts, test boards.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in COMMAND_MODULES:
        importlib.import_module(f"labfleet.cli.{module}").register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
