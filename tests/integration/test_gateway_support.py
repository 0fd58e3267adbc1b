"""Shared pieces of the gateway tests (no tests here): a running gateway on real NATS and
PostgreSQL, and tiny responders that stand in for other services on the real bus,
answering the real contracts."""
from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from labfleet.embedded.ports import free_port
from pydantic import BaseModel


@dataclass
class RunningGateway:
    service: Any
    base_url: str
    data_dir: Path
    admin_password: str
    admin_token: str
    nc: Any
    received: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def gateway(self) -> Any:
        return self.service.gateway

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30.0,
                                 **kwargs)

    def anonymous(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0)


CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')


def csrf_from_form(html: str) -> str:
    """The CSRF token a browser sends with the page's form: its hidden field."""
    found = CSRF_FIELD.search(html)
    assert found, "the page has no form carrying a CSRF token"
    return found.group(1)


async def browser_log_in(http: httpx.AsyncClient, username: str, password: str,
                         next_url: str = "/") -> httpx.Response:
    """Log in the way a browser does: open the login page, send its form back."""
    page = await http.get("/login")
    return await http.post("/login", data={"username": username, "password": password,
                                           "next": next_url,
                                           "csrf_token": csrf_from_form(page.text)})


def read_credentials(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(": ")
        out[key] = value
    return out


@pytest.fixture(scope="session")
async def gateway(nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[RunningGateway]:
    from labfleet.gateway.main import create
    from labfleet.shared.settings import Settings

    # the first start must find no users (the test database may have seen a gateway before)
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('gateway.users') IS NOT NULL"):
            await conn.execute("DELETE FROM gateway.users")
    finally:
        await conn.close()
    data_dir = tmp_path_factory.mktemp("gateway-data")
    settings = Settings(nats_url=nats_url, database_url=database_url, data_dir=data_dir,
                        log_json=False, http_host="127.0.0.1", http_port=free_port("127.0.0.1"))
    service = create(settings)
    await service.start()
    creds = read_credentials(data_dir / "admin-credentials")
    nc = await nats.connect(nats_url)
    running = RunningGateway(service=service,
                             base_url=f"http://127.0.0.1:{settings.http_port}",
                             data_dir=data_dir, admin_password=creds["password"],
                             admin_token=creds["api_token"], nc=nc)
    yield running
    await nc.close()
    await service.stop()


Handler = Callable[[bytes], Awaitable[BaseModel] | BaseModel]


@contextlib.asynccontextmanager
async def responder(nc: Any, subject: str, handler: Handler,
                    received: list[bytes] | None = None) -> AsyncIterator[list[bytes]]:
    """Answer ``subject`` with ``handler(request bytes)`` until the block ends."""
    seen: list[bytes] = received if received is not None else []

    async def on_request(msg: Any) -> None:
        seen.append(msg.data)
        reply = handler(msg.data)
        if asyncio.iscoroutine(reply):
            reply = await reply
        await msg.respond(reply.model_dump_json().encode())  # type: ignore[union-attr]

    sub = await nc.subscribe(subject, cb=on_request)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()
        await nc.flush()


def fixed(reply: BaseModel) -> Handler:
    return lambda _data: reply


async def kv_bucket(js: Any, name: str) -> Any:
    """Bind to a KV bucket the way its owner (the monitor) does: use it if it exists."""
    import nats.js.errors
    from nats.js.api import KeyValueConfig

    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1))


async def artifact_store(js: Any) -> Any:
    """The ``artifacts`` object store, bound if the builder made it already."""
    import nats.js.errors

    try:
        return await js.object_store("artifacts")
    except nats.js.errors.BucketNotFoundError:
        return await js.create_object_store("artifacts")
