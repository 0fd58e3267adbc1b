"""``labfleet nats …``: the bus's identities — list them, issue one to external tooling,
generate the compose deployment's (``compose-secrets``).

External tooling (a CI system submitting jobs) gets an NKEY of its own: it may publish
``job.*`` and read the public event streams, nothing else.  The seed is written into the
data directory (0600) and the running embedded server re-reads its configuration, so
the new identity works at once; hand the seed file to the tool (it is its password).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from labfleet.shared.natsauth.identities import IdentityError, IdentityStore
from labfleet.shared.natsauth.permissions import PUBLIC_STREAMS, SERVICES
from labfleet.shared.settings import load_settings

from .compose_secrets import compose_secrets
from .datadir import RunFiles

app = typer.Typer(name="nats", help="The bus's identities: who may publish and read what.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="the data directory of `labfleet up` (default: LABFLEET_DATA_DIR or "
    "~/.local/share/labfleet)")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="nats")


# the compose deployment's identities and certificates (cli/compose_secrets.py)
app.command("compose-secrets")(compose_secrets)


def _store(data_dir: Path | None) -> tuple[Path, IdentityStore]:
    folder = (data_dir or load_settings().data_dir).expanduser().resolve()
    return folder, IdentityStore(folder / "nats" / "identities")


def _fail(message: str) -> None:
    typer.echo(f"labfleet nats: {message}", err=True)
    raise typer.Exit(1)


def _reload_server(folder: Path) -> str:
    """Have the embedded server of a running `labfleet up` re-read its configuration."""
    from labfleet.embedded.nats import write_config

    pid = RunFiles(folder).read_pid("nats-server")
    conf = folder / "nats" / "nats.conf"
    if not conf.exists():
        return ("no embedded nats-server configuration here yet: the identity takes effect "
                "when `labfleet up` starts")
    write_config(conf)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
            return f"the embedded nats-server (pid {pid}) re-read its configuration"
        except ProcessLookupError:
            pass
    return "the embedded nats-server is not running: the identity takes effect at its start"


@app.command("identities")
def identities(data_dir: DataDir = None) -> None:
    """Every identity the embedded server admits, with its public key."""
    folder, store = _store(data_dir)
    if not store.dir.is_dir():
        _fail(f"no identities in {store.dir}: `labfleet up` creates them on its first start")
    try:
        keys = store.service_public_keys()
        externals = store.externals()
    except IdentityError as exc:
        _fail(str(exc))
    for name in SERVICES:
        typer.echo(f"service   {name:<12} {keys.get(name, '(missing)')}")
    for tool, key in externals.items():
        typer.echo(f"external  {tool:<12} {key}  ({store.external_path(tool)})")
    typer.echo(f"operator  {'operator':<12} password in {store.operator_password_path}")


@app.command("add-external")
def add_external(name: Annotated[str, typer.Argument(help="a name for the tool (ci-bot)")],
                 data_dir: DataDir = None) -> None:
    """Issue an identity to external tooling: may publish job.* and read public events."""
    folder, store = _store(data_dir)
    if not store.dir.is_dir():
        _fail(f"no identities in {store.dir}: start `labfleet up` once first")
    try:
        path = store.add_external(name)
    except IdentityError as exc:
        _fail(str(exc))
    typer.echo(f"external identity {name!r}: seed in {path} (mode 0600; give it to the tool, "
               "it is its password)")
    typer.echo(f"it may publish job.* and read the streams {', '.join(PUBLIC_STREAMS)}; "
               "its replies arrive on _INBOX.>, nats-py's default")
    typer.echo(_reload_server(folder))


@app.command("remove-external")
def remove_external(name: Annotated[str, typer.Argument(help="the tool's name")],
                    data_dir: DataDir = None) -> None:
    """Withdraw an external tool's identity; the server closes its connections."""
    folder, store = _store(data_dir)
    try:
        store.remove_external(name)
    except IdentityError as exc:
        _fail(str(exc))
    typer.echo(f"external identity {name!r} removed")
    typer.echo(_reload_server(folder))
