"""The one client that asks inventory for a resource's login, against a real NATS server
and the monitor's own identity on it (one of the services allowed to ask)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import SecretStr

from labfleet.shared.access import AccessRefused, InventoryDidNotAnswer, ask_access
from labfleet.shared.bus import Bus, reveal_secrets_json
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.resource import (
    CredentialsReply,
    GetCredentials,
    ResourceKind,
    ResourceView,
    SshTarget,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def monitor_bus(settings_factory: Any) -> Any:
    bus = Bus.create(settings_factory(), "monitor")
    await bus.start()
    yield bus
    await bus.stop()


async def test_no_inventory_is_a_retryable_unanswered_question(monitor_bus: Bus) -> None:
    with pytest.raises(InventoryDidNotAnswer, match="inventory did not answer .* QEMU host"):
        await ask_access(monitor_bus, uuid.uuid4(), timeout=1.0, what="QEMU host")


async def test_answers_become_access_or_a_refusal_with_its_hint(monitor_bus: Bus,
                                                               nc: Any) -> None:
    known = ResourceView(resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER,
                         name="bs-access", ssh=SshTarget(address="127.0.0.1", port=2222,
                                                         username="lab", host_key="k"))

    async def inventory(msg: Any) -> None:
        ask = GetCredentials.model_validate_json(msg.data)
        if ask.resource_id == known.resource_id:
            reply = CredentialsReply(ok=True, resource=known, password=SecretStr("pw-123"))
        else:
            reply = CredentialsReply(ok=False, error=ErrorInfo(
                code="not_found", message="no such resource", hint="list them first"))
        await msg.respond(reveal_secrets_json(reply).encode())

    sub = await nc.subscribe(GetCredentials.subject, cb=inventory)
    await nc.flush()
    try:
        access = await ask_access(monitor_bus, known.resource_id, what="build server")
        assert (access.name, access.host, access.port) == ("bs-access", "127.0.0.1", 2222)
        assert access.creds.username == "lab" and access.creds.password == "pw-123"
        assert "pw-123" not in repr(access)
        with pytest.raises(AccessRefused) as refused:
            await ask_access(monitor_bus, uuid.uuid4(), what="build server")
        assert refused.value.code == "not_found" and refused.value.hint == "list them first"
        assert "no such resource" in str(refused.value)
    finally:
        await sub.unsubscribe()
