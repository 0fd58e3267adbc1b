"""The gateway's environment API, against the real bus, with stand-ins answering the
scheduler's and deployer's real contracts (the lab tests run the real ones)."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from labfleet.shared.events.env import (
    ConsoleChunk,
    CreateEnv,
    CreateEnvReply,
    DeployReply,
    EnvReply,
    EnvSpec,
    EnvStatus,
    EnvView,
    GetEnv,
    ListEnvs,
    ReleaseEnv,
    console_subject,
)
from labfleet.shared.events.envelope import ErrorInfo

from .test_gateway_support import fixed, responder
from .test_gateway_support import gateway  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.integration

SPEC = {"arch": "arm64", "vcpus": 2, "memory_mb": 512,
        "artifacts": {"branch": "main"}, "host": "Auto"}


def view(env_id: uuid.UUID, status: EnvStatus) -> EnvView:
    return EnvView(env_id=env_id, spec=EnvSpec.model_validate(SPEC), status=status,
                   host_name="qemu1", vm_name=f"labfleet-{env_id.hex[:8]}",
                   build_id=uuid.uuid4(), commit="abc123", created_at=datetime.now(UTC),
                   console="virsh -c qemu+ssh://lab@10.0.0.41/system console vm")


async def test_create_show_console_release(gateway) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    env_id = uuid.uuid4()
    queued = CreateEnvReply(ok=True, env_id=env_id, status=EnvStatus.QUEUED, position=2,
                            estimated_wait_s=120.0, warning="qemu1 is full; queued")
    async with gateway.client() as api:
        async with responder(gateway.nc, CreateEnv.subject, fixed(queued)) as seen:
            r = await api.post("/api/v1/environments", json=SPEC)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["id"] == str(env_id) and body["position"] == 2
        assert body["estimated_wait_s"] == 120.0 and "full" in body["warning"]
        sent = CreateEnv.model_validate_json(seen[0])
        assert sent.spec.host is None and sent.spec.artifacts.branch == "main"  # Auto
        assert sent.requested_by == "admin"

        # a refusal keeps the scheduler's code and the hosts that would fit
        refused = CreateEnvReply(ok=False, alternatives=["qemu2"], error=ErrorInfo(
            code="host_lacks_capacity", message="qemu1 has 1 free vCPU, 2 asked",
            field="host"))
        async with responder(gateway.nc, CreateEnv.subject, fixed(refused)):
            r = await api.post("/api/v1/environments", json={**SPEC, "host": "qemu1"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "host_lacks_capacity"

        # bad input never reaches the bus
        r = await api.post("/api/v1/environments",
                           json={**SPEC, "artifacts": {"branch": "main", "commit": "abc"}})
        assert r.status_code == 422
        assert "exactly one" in r.text

        running = view(env_id, EnvStatus.RUNNING)
        async with responder(gateway.nc, GetEnv.subject, fixed(EnvReply(ok=True, env=running))):
            r = await api.get(f"/api/v1/environments/{env_id}")
            assert r.status_code == 200
            assert r.json()["host_name"] == "qemu1" and r.json()["commit"] == "abc123"

            # the console as the deployer captured it, followed to the end of the boot
            js = gateway.nc.jetstream()
            for seq, (text, eof) in enumerate([("Booting Linux\n", False),
                                               ("LABFLEET-BOOT-OK 6.1\n", True)]):
                chunk = ConsoleChunk(env_id=env_id, deployment=1, seq=seq,
                                     at=datetime.now(UTC), text=text, eof=eof)
                await js.publish(console_subject(env_id), chunk.model_dump_json().encode())
            r = await api.get(f"/api/v1/environments/{env_id}/console",
                              params={"follow": 1})
            assert r.text == "Booting Linux\nLABFLEET-BOOT-OK 6.1\n"

            async with responder(gateway.nc, ReleaseEnv.subject,
                                 fixed(DeployReply(ok=True, env_id=env_id))) as released:
                r = await api.post(f"/api/v1/environments/{env_id}/release")
            assert r.status_code == 200
            assert json.loads(released[0])["env_id"] == str(env_id)

        # nobody answers env.cmd.list: the answer names the service that is missing
        r = await api.get("/api/v1/environments")
        assert r.status_code == 503, r.text
        assert "deployer" in r.json()["error"]["message"]
        assert ListEnvs.subject in r.text
