"""``labfleet health [SERVICE]``: is a service alive, as seen over NATS.

Each service answers ``system.cmd.ping.<name>`` (see ``shared/service.py``).  Exit 0 when
every asked service answers, 1 otherwise; container health checks use this.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import nats
import typer
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from labfleet.shared.events.system import Ping, Pong
from labfleet.shared.natsauth.identities import IdentityStore, connect_options, with_password
from labfleet.shared.natsauth.permissions import OPERATOR
from labfleet.shared.settings import load_settings

from .datadir import RunFiles
from .stack import redact_url
from .registry import SERVICE_NAMES, UnknownService, is_present


async def ping_service(nc: nats.NATS, name: str, timeout: float) -> Pong:
    subject = Ping.subject.format(service=name)
    msg = await nc.request(subject, Ping().model_dump_json().encode(), timeout=timeout)
    return Pong.model_validate_json(msg.data)


async def ping_all(nats_url: str, names: list[str], timeout: float,
                   login: dict[str, Any] | None = None) -> dict[str, Pong | str]:
    """Each name's Pong, or what went wrong as a sentence."""
    async def quiet(_: Exception) -> None:  # the caller reports failures in one sentence
        return None

    # one attempt per server; (0 would mean "retry forever" to nats-py)
    servers = [u.strip() for u in nats_url.split(",") if u.strip()]
    nc = await nats.connect(servers, connect_timeout=timeout, allow_reconnect=False,
                            max_reconnect_attempts=1, error_cb=quiet, **(login or {}))
    try:
        async def one(name: str) -> Pong | str:
            try:
                return await ping_service(nc, name, timeout)
            except NoRespondersError:
                return f"no instance listens on system.cmd.ping.{name}"
            except (NatsTimeout, asyncio.TimeoutError):
                return f"no answer on system.cmd.ping.{name} within {timeout:g} s"

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))
    finally:
        await nc.close()


def resolve_nats_url(data_dir: Path | None) -> str | None:
    """LABFLEET_NATS_URL, else the NATS of a `labfleet up` running on the data dir, with
    the operator's password from that data directory (never printed: see redact_url)."""
    url, _ = resolve_nats(data_dir)
    return url


def resolve_nats(data_dir: Path | None, identity: str | None = None
                 ) -> tuple[str | None, dict[str, Any]]:
    """Where NATS is and how to log in: a seed given by LABFLEET_NATS_SEED_FILE (a
    service's own container) as ``identity``, else the URL as given, else the operator
    of the `labfleet up` running on the data directory."""
    settings = load_settings()
    if settings.nats_url:
        if settings.nats_seed_file or settings.nats_tls_ca_file:
            # a service's container: its own seed, and the cluster's CA for TLS
            servers, options = connect_options(settings, identity or OPERATOR)
            return ",".join(servers), options
        return settings.nats_url, {}
    folder = data_dir or settings.data_dir
    url = RunFiles(folder).read_endpoints().get("nats_url")
    store = IdentityStore(folder / "nats" / "identities")
    if url and store.operator_password_path.exists():
        url = with_password(url, OPERATOR, store.operator_password())
    return url, {}


def health(
    service: Annotated[str | None, typer.Argument(
        help="service to ping; all of them when omitted")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 5.0,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="find NATS from a `labfleet up` on this data dir")] = None,
) -> None:
    """Ping a service over NATS; exit 0 if it answers, 1 if not."""
    if service is not None and service not in SERVICE_NAMES:
        typer.echo(f"labfleet health: {UnknownService(service)}", err=True)
        raise typer.Exit(2)
    url, login = resolve_nats(data_dir, service)
    if not url:
        typer.echo("labfleet health: LABFLEET_NATS_URL is not set and no `labfleet up` is "
                   "running on the data dir: set it to the NATS server the services use",
                   err=True)
        raise typer.Exit(1)
    names = [service] if service else [n for n in SERVICE_NAMES if is_present(n)]
    if not names:
        typer.echo("labfleet health: no service is built yet", err=True)
        raise typer.Exit(1)
    try:
        results = asyncio.run(ping_all(url, names, timeout, login))
    except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
        typer.echo(f"labfleet health: cannot reach NATS at {redact_url(url)}: {exc or type(exc).__name__}",
                   err=True)
        raise typer.Exit(1) from None
    healthy = True
    for name, result in results.items():
        if isinstance(result, Pong):
            typer.echo(f"{name}: alive ({result.instance}, version {result.version}, "
                       f"up since {result.started_at:%Y-%m-%d %H:%M:%S %Z})")
        else:
            healthy = False
            typer.echo(f"{name}: NOT answering: {result}")
    raise typer.Exit(0 if healthy else 1)


def register(app: typer.Typer) -> None:
    app.command()(health)
