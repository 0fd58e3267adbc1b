"""``labfleet up``: the whole stack on one machine, supervised, with nothing configured.

Order of things: lock the data directory, generate the secrets, start (or take from the
environment) NATS and PostgreSQL, start every available service as its own process, say
where the UI is once every service answers its ping; on Ctrl-C / SIGTERM stop the
services, then the servers, and exit 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import nats
import typer

from labfleet.shared.settings import Settings, load_settings

from .datadir import CREDENTIALS_FILE, DataDirBusy, DataDirLock, RunFiles, stack_secrets
from .health import ping_all
from .registry import SERVICE_NAMES, load_all
from .stack import Stack, start_stack, stop_orphan
from .supervisor import ChildSpec, Output, Supervisor, service_argv

STILL_WAITING_EVERY_S = 30.0
SERVER_CHECK_EVERY_S = 1.0


def up(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="where state lives (default: LABFLEET_DATA_DIR or "
        "~/.local/share/labfleet)")] = None,
    port: Annotated[int | None, typer.Option(
        help="HTTP port of the gateway (default: LABFLEET_HTTP_PORT or 8080)")] = None,
    grace: Annotated[float, typer.Option(
        help="seconds a service gets to stop after SIGTERM before SIGKILL")] = 15.0,
    demo: Annotated[bool, typer.Option(
        "--demo", help="also bring up a small emulated lab (needs root) and register it, "
        "so the UI shows a live lab")] = False,
) -> None:
    """Run NATS, PostgreSQL and every service on this machine, supervised."""
    settings = load_settings()
    data_dir = (data_dir or settings.data_dir).expanduser().resolve()
    port = port or settings.http_port
    out = Output()
    # until the event loop takes over, SIGTERM unwinds like Ctrl-C so `finally` blocks run
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        typer.echo(f"labfleet up: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        entries = load_all()
        for entry in entries:
            if not entry.available:
                out.say(f"skipping {entry.name}: {entry.problem}")
        names = [e.name for e in entries if e.available]
        if not names:
            out.say("no service is available: running the servers only")
        if "gateway" in names and not _port_free(settings.http_host, port):
            typer.echo(f"labfleet up: port {port} on {settings.http_host} is in use: stop what "
                       "listens there, or choose another port with --port", err=True)
            raise typer.Exit(1)
        out.say(f"data directory: {data_dir}")
        run_files = RunFiles(data_dir)
        for name in SERVICE_NAMES:
            stop_orphan(run_files, name, service_argv(name)[1:], out.say)
        secrets = stack_secrets(settings, data_dir)
        try:
            stack = start_stack(settings, data_dir, run_files, out.say)
        except KeyboardInterrupt:
            out.say("interrupted while starting the servers")
            raise typer.Exit(130) from None
        try:
            for line in stack.describe():
                out.say(line)
            http_url = f"http://{settings.http_host}:{port}"
            run_files.write_endpoints(_endpoints(stack, http_url))
            env = _service_env(settings, data_dir, port, stack, secrets)
            specs = [ChildSpec(name, service_argv(name), env) for name in names]
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_supervise(specs, stack, run_files, out, grace, http_url, data_dir,
                                       demo))
        finally:
            # the services are down; let nothing interrupt stopping the servers under them
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            run_files.remove_endpoints()
            stack.stop(out.say)
            run_files.remove_pid("nats-server")
    finally:
        lock.release()
    out.say("stopped")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _endpoints(stack: Stack, http_url: str) -> dict[str, str]:
    endpoints = {"nats_url": stack.nats_url, "http_url": http_url, "pid": str(os.getpid())}
    if stack.postgres is not None:  # an embedded URL carries no password
        endpoints["database_url"] = stack.database_url
    return endpoints


def _service_env(settings: Settings, data_dir: Path, port: int, stack: Stack,
                 secrets: dict[str, str]) -> dict[str, str]:
    """The services' environment; secrets travel here, never on a command line."""
    env = dict(os.environ)
    env.update(secrets)
    env.update({
        "LABFLEET_NATS_URL": stack.nats_url,
        "LABFLEET_DATABASE_URL": stack.database_url,
        "LABFLEET_DATA_DIR": str(data_dir),
        "LABFLEET_HTTP_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    })
    if stack.identity_dir is not None:
        # each service picks its own seed, <dir>/<service>.nk, from here
        env["LABFLEET_NATS_IDENTITY_DIR"] = str(stack.identity_dir)
        env.pop("LABFLEET_NATS_SEED_FILE", None)
    if "LABFLEET_LOG_JSON" not in os.environ and sys.stdout.isatty():
        env["LABFLEET_LOG_JSON"] = "false"  # a person is reading: plain lines
    return env


async def _supervise(specs: list[ChildSpec], stack: Stack, run_files: RunFiles, out: Output,
                     grace: float, http_url: str, data_dir: Path, demo: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervisor = Supervisor(specs, run_files, out, grace_s=grace)

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            out.say(f"{sig.name} received: stopping (again to kill at once)")
            stop.set()
        else:
            supervisor.kill_now()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await supervisor.start()
    watch = asyncio.create_task(_keep_servers_running(stack, run_files, out))
    announce = asyncio.create_task(
        _announce_when_ready(supervisor, stack.operator_url, [s.name for s in specs], out,
                             http_url, data_dir, demo))
    try:
        await stop.wait()
    finally:
        for task in (announce, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await supervisor.stop()


async def _keep_servers_running(stack: Stack, run_files: RunFiles, out: Output) -> None:
    """Start an embedded NATS or PostgreSQL again when it dies, as the services are."""
    while True:
        await asyncio.sleep(SERVER_CHECK_EVERY_S)
        try:
            revived = await asyncio.to_thread(stack.revive, out.say)
        except Exception as exc:  # noqa: BLE001 - tried again at the next check
            out.say(f"could not start an embedded server again: {exc}")
            continue
        if "nats-server" in revived and stack.nats is not None:
            run_files.write_pid("nats-server", stack.nats.process.pid)


async def _announce_when_ready(supervisor: Supervisor, nats_url: str, names: list[str],
                               out: Output, http_url: str, data_dir: Path,
                               demo: bool = False) -> None:
    """Wait until every service answers its ping, then say where to go."""
    started = time.monotonic()
    waiting = list(names)
    last_note = started
    while waiting:
        try:
            results = await ping_all(nats_url, waiting, timeout=1.0)
            waiting = [name for name, result in results.items() if isinstance(result, str)]
        except (OSError, nats.errors.Error, asyncio.TimeoutError):
            pass
        if waiting:
            if time.monotonic() - last_note > STILL_WAITING_EVERY_S:
                out.say(f"still waiting for {', '.join(waiting)} to answer on NATS")
                last_note = time.monotonic()
            await asyncio.sleep(0.5)
    if names:
        out.say(f"ready in {time.monotonic() - started:.1f} s: {', '.join(names)} answer on NATS")
    out.say(supervisor.status_line())
    if "gateway" in names:
        out.say(f"UI: {http_url}")
        out.say(f"admin credentials: in {data_dir / CREDENTIALS_FILE} "
                "(written by the gateway on its first start)")
    else:
        out.say("no UI: the gateway is not available")
    out.say("Ctrl-C stops everything")
    if demo:
        if "gateway" not in names:
            out.say("demo: no gateway to register the lab with")
            return
        await asyncio.to_thread(_demo_lab, http_url, data_dir, out)


def _demo_lab(http_url: str, data_dir: Path, out: Output) -> None:
    """Bring up the small emulated lab and register it through the API, as a user would."""
    from labfleet.lab import api as lab_api

    out.say("demo: bringing up the emulated lab (the first time builds its kernels: minutes)")
    try:
        lab_api.ensure_demo_lab(say=lambda line: out.say(f"demo: {line}"))
        token = _admin_token(data_dir)
        for line in lab_api.register_all(http_url, token):
            out.say(f"demo: {line}")
    except Exception as exc:  # noqa: BLE001 - the stack keeps running without the demo lab
        out.say(f"demo: the lab could not be brought up or registered: {exc} "
                "(the lab needs root, QEMU and libvirt: `bash infra/setup.sh`); "
                "labfleet itself keeps running")
        return
    out.say("demo: the lab is registered; `labfleet lab down` removes it")


def _admin_token(data_dir: Path) -> str:
    path = data_dir / CREDENTIALS_FILE
    for _ in range(100):  # the gateway writes it on its first start
        if path.exists():
            break
        time.sleep(0.1)
    fields = dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    return fields["api_token"]


def register(app: typer.Typer) -> None:
    app.command()(up)
