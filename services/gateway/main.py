"""``create(settings) -> Service``: the gateway's one bootstrap.

On start (after its migrations and the bus) it makes sure an admin exists, opens the live
hub, and serves HTTP with uvicorn inside the service's own event loop — signals stay
with :meth:`Service.run`, so Ctrl-C stops HTTP, bus and database in order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvicorn
from labfleet.shared.memory import keep_large_buffers
from labfleet.shared.s3 import S3Store
from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

from .adapters.accounts import Accounts
from .adapters.live import LiveHub
from .adapters.state import SharedState
from .app import create_app
from .context import Gateway
from .domain.credentials import new_password
from .metrics import Metrics
from .templating import make_templates

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
ADMIN_FILE = "admin-credentials"
SESSION_SECRET_FILE = "session-secret"


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, replacing any older file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, whose bind failure exits the whole process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(
            f"the gateway cannot listen on {host}:{port}: {exc.strerror}; another program "
            "may use the port — set LABFLEET_HTTP_PORT (or LABFLEET_HTTP_HOST) to a free one"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def session_secret(settings: Settings) -> str:
    """The cookie-signing key: given in settings, or generated once into the data dir."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    path = settings.data_dir / SESSION_SECRET_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_private(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


async def ensure_admin(accounts: Accounts, data_dir: Path) -> None:
    """With no users at all, create ``admin`` and hand its secrets over through a file."""
    if await accounts.count_users() > 0:
        return
    password = new_password()
    try:
        admin = await accounts.create_user("admin", password)
    except asyncpg.UniqueViolationError:
        return  # another gateway replica created it a moment ago
    _, token = await accounts.create_token(admin, "admin (created on first start)")
    path = data_dir / ADMIN_FILE
    write_private(path, f"username: admin\npassword: {password}\napi_token: {token.text}\n")
    log.warning("created the first user 'admin'; its password and API token are in the file "
                "named here (readable by this user only)", extra={"path": str(path)})


@dataclass
class GatewayService(Service):
    """A :class:`Service` that also holds what its HTTP side runs on."""

    gateway: Gateway | None = None


def create(settings: Settings) -> GatewayService:
    keep_large_buffers()  # artifact downloads pass through in multi-megabyte batches
    svc = GatewayService.create("gateway", settings, migrations=HERE / "migrations")
    assert isinstance(svc, GatewayService) and svc.db is not None
    state = SharedState(svc.bus)
    metrics = Metrics()
    s3_config = settings.s3_config()  # a half-given S3 configuration stops the start here
    gateway = Gateway(settings=settings, bus=svc.bus, accounts=Accounts(svc.db), state=state,
                      hub=LiveHub(svc.bus, state), templates=make_templates(),
                      metrics=metrics, s3=S3Store(s3_config) if s3_config else None)
    gateway.hub.on_clients_changed = lambda n: metrics.sse_clients.set(n)
    svc.gateway = gateway
    server: EmbeddedServer | None = None
    serving: asyncio.Task[None] | None = None

    async def start_http() -> None:
        nonlocal server, serving
        await ensure_admin(gateway.accounts, settings.data_dir)
        await gateway.hub.start()
        app = create_app(gateway, session_secret(settings))
        config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3)
        server = EmbeddedServer(config)
        sock = listen_socket(settings.http_host, settings.http_port)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        while not server.started:
            if serving.done():
                raise RuntimeError("the gateway's HTTP server stopped while starting; "
                                   "see the log lines above")
            await asyncio.sleep(0.02)
        host, port = sock.getsockname()[:2]
        log.info("gateway serving", extra={"url": f"http://{host}:{port}"})

    async def stop_http() -> None:
        await gateway.hub.stop()
        if server is not None and serving is not None:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await serving

    svc.on_start.append(start_http)
    if gateway.s3 is not None:  # stop hooks run last-added first: after the HTTP side
        svc.on_stop.append(gateway.s3.close)
    svc.on_stop.append(stop_http)
    return svc
