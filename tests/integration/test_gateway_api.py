"""The gateway's REST API against real NATS and PostgreSQL: auth, error mapping, artifacts,
logs, liveness, AsyncAPI and metrics.  Other services are stood in for by responders on
the real bus answering the real contracts."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from labfleet.shared.events.build import (
    ArtifactInfo,
    BuildReply,
    BuildSpec,
    BuildStatus,
    BuildView,
    LogChunk,
    SubmitBuildReply,
)
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HostSample, SampleHistoryReply
from labfleet.shared.events.resource import (
    Arch,
    BuildServerCapabilities,
    RegisterBuildServer,
    RegistrationReply,
    ResourceKind,
    ResourceListReply,
    ResourceReply,
    ResourceView,
    SshTarget,
    Toolchain,
)
from labfleet.shared.events.system import Pong

from .test_gateway_support import (  # noqa: F401
    RunningGateway,
    artifact_store,
    fixed,
    gateway,
    kv_bucket,
    responder,
)

pytestmark = pytest.mark.integration


def server_view(name: str, resource_id: uuid.UUID | None = None) -> ResourceView:
    return ResourceView(
        resource_id=resource_id or uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name=name,
        ssh=SshTarget(address="127.0.0.1", port=2222, username="lab",
                      host_key_fingerprint="SHA256:abcdef"),
        architectures=[Arch.X86_64],
        capabilities=BuildServerCapabilities(
            cpu_cores=4, memory_mb=8192, disk_total_gb=100, disk_free_gb=50,
            toolchains=[Toolchain(arch=Arch.X86_64, prefix="", compiler="gcc",
                                  version="gcc (Debian 12.2.0-14) 12.2.0")]),
        registered_at=datetime.now(UTC))


def sample(resource_id: uuid.UUID, cpu: float) -> HostSample:
    return HostSample(resource_id=resource_id, kind=ResourceKind.BUILD_SERVER,
                      at=datetime.now(UTC), cpu_pct=cpu, load1=0.5, cpu_cores=4,
                      mem_total_mb=8192, mem_used_mb=2048, disk_total_gb=100.0,
                      disk_free_gb=50.0)


# ---- authentication -------------------------------------------------------------------


async def test_api_refuses_missing_and_bad_tokens_and_accepts_the_admin_token(
        gateway: RunningGateway, database_url: str) -> None:
    async with gateway.anonymous() as anon:
        missing = await anon.get("/api/v1/tokens")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert "API token" in missing.json()["error"]["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await anon.get("/api/v1/tokens", headers={"Authorization": "Bearer lf_tok_"
                                                          + uuid.uuid4().hex + "_nope"})
        assert wrong.status_code == 401
        assert "not valid" in wrong.json()["error"]["message"]
        # the right row id with a wrong secret is refused too
        good_id = gateway.admin_token.split("_")[2]
        forged = await anon.get("/api/v1/tokens",
                                headers={"Authorization": f"Bearer lf_tok_{good_id}_x"})
        assert forged.status_code == 401
        basic = await anon.get("/api/v1/tokens", headers={"Authorization": "Basic YWRtaW4="})
        assert basic.status_code == 401
    async with gateway.client() as api:
        ok = await api.get("/api/v1/tokens")
        assert ok.status_code == 200, ok.text
        assert [t["name"] for t in ok.json()] == ["admin (created on first start)"]
        assert "token" not in ok.json()[0]

    # the admin's secrets are in a file only its owner may read; the database holds hashes
    creds = gateway.data_dir / "admin-credentials"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT row_to_json(t)::text AS j FROM gateway.api_tokens t")
        users = await conn.fetch("SELECT row_to_json(u)::text AS j FROM gateway.users u")
    finally:
        await conn.close()
    secret = gateway.admin_token.split("_", 3)[3]
    dump = " ".join(r["j"] for r in rows + users)
    assert secret not in dump and gateway.admin_token not in dump
    assert gateway.admin_password not in dump
    assert hashlib.sha256(secret.encode()).hexdigest() in dump
    assert "scrypt$" in dump


async def test_tokens_can_be_created_used_and_revoked(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        bad = await api.post("/api/v1/tokens", json={"name": ""})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "name"
        made = await api.post("/api/v1/tokens", json={"name": "ci", "expires_in_days": 30})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        assert token.startswith("lf_tok_")
    async with gateway.client(token) as ci:
        assert (await ci.get("/api/v1/tokens")).status_code == 200
        revoked = await ci.delete(f"/api/v1/tokens/{made.json()['id']}")
        assert revoked.status_code == 204
        after = await ci.get("/api/v1/tokens")
        assert after.status_code == 401


# ---- build servers --------------------------------------------------------------------


async def test_registration_errors_become_4xx_with_the_services_reason(
        gateway: RunningGateway) -> None:
    body = {"hostname": "bs-auth", "address": "127.0.0.1", "ssh_port": 2222,
            "username": "lab", "password": "s3cret-pw", "architectures": ["x86_64"]}
    refused = RegistrationReply(ok=False, error=ErrorInfo(
        code="authentication_failed", message="127.0.0.1:2222 refused the password for lab",
        hint="check the user name and password", field="password"))
    async with gateway.client() as api:
        async with responder(gateway.nc, RegisterBuildServer.subject, fixed(refused)) as seen:
            r = await api.post("/api/v1/build-servers", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == {"code": "authentication_failed",
                                     "message": "127.0.0.1:2222 refused the password for lab",
                                     "hint": "check the user name and password",
                                     "field": "password"}
        sent = RegisterBuildServer.model_validate_json(seen[0])
        # the command carries the secret to inventory, and who asked
        assert sent.password is not None and sent.password.get_secret_value() == "s3cret-pw"
        assert sent.requested_by == "admin"
        assert "s3cret-pw" not in r.text

        duplicate = RegistrationReply(ok=False, error=ErrorInfo(
            code="duplicate_name", message="a server named bs-auth exists", field="hostname"))
        async with responder(gateway.nc, RegisterBuildServer.subject, fixed(duplicate)):
            r = await api.post("/api/v1/build-servers", json=body)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "duplicate_name"
        assert r.json()["error"]["field"] == "hostname"

        view = server_view("bs-ok")
        async with responder(gateway.nc, RegisterBuildServer.subject,
                             fixed(RegistrationReply(ok=True, resource=view))):
            r = await api.post("/api/v1/build-servers", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == str(view.resource_id)
        assert r.json()["ssh"]["host_key_fingerprint"] == "SHA256:abcdef"
        assert r.headers["location"] == f"/api/v1/build-servers/{view.resource_id}"

        invalid = await api.post("/api/v1/build-servers", json={**body, "ssh_port": 70000})
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "validation_failed"
        assert invalid.json()["error"]["field"] == "ssh_port"


async def test_503_names_the_service_that_is_not_running(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        r = await api.get(f"/api/v1/build-servers/{uuid.uuid4()}")
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "service_unavailable"
        assert "inventory" in err["message"] and "resource.cmd.get" in err["message"]
        spec = {"repo_url": "https://git.example.invalid/x.git", "ref": "main", "arch": "x86_64"}
        r = await api.post("/api/v1/builds", json=spec)
        assert r.status_code == 503
        assert "scheduler" in r.json()["error"]["message"]
        r = await api.get("/api/v1/builds")
        assert r.status_code == 503
        assert "builder" in r.json()["error"]["message"]


async def test_build_server_detail_joins_kv_state_and_history(gateway: RunningGateway) -> None:
    from labfleet.shared.events.health import HEALTH_BUCKET, SAMPLES_BUCKET, HealthRecord

    view = server_view(f"bs-detail-{uuid.uuid4().hex[:6]}")
    js = gateway.nc.jetstream()
    samples = await kv_bucket(js, SAMPLES_BUCKET)
    health = await kv_bucket(js, HEALTH_BUCKET)
    await samples.put(str(view.resource_id), sample(view.resource_id, 42.0).model_dump_json()
                      .encode())
    await health.put(str(view.resource_id), HealthRecord(
        resource_id=view.resource_id, kind=ResourceKind.BUILD_SERVER, status="degraded",
        reason="disk low", warnings=["disk free 5.0 GB < 10 GB"]).model_dump_json().encode())
    history = SampleHistoryReply(ok=True, samples=[sample(view.resource_id, c)
                                                   for c in (10.0, 20.0, 30.0)])
    async with gateway.client() as api, \
            responder(gateway.nc, "resource.cmd.get", fixed(ResourceReply(ok=True,
                                                                          resource=view))), \
            responder(gateway.nc, "health.cmd.history", fixed(history)):
        r = await api.get(f"/api/v1/build-servers/{view.resource_id}")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "degraded"
    assert data["health"]["warnings"] == ["disk free 5.0 GB < 10 GB"]
    assert data["sample"]["cpu_pct"] == 42.0
    assert [s["cpu_pct"] for s in data["history"]] == [10.0, 20.0, 30.0]
    assert data["capabilities"]["toolchains"][0]["compiler"] == "gcc"


async def test_listing_2000_servers_is_paged_and_filtered_on_the_server(
        gateway: RunningGateway) -> None:
    tag = uuid.uuid4().hex[:6]
    views = [server_view(f"fleet-{tag}-{i:04d}") for i in range(2000)]
    gateway.gateway.hub.forget_resources()
    reply = ResourceListReply(ok=True, resources=views)
    async with gateway.client() as api, \
            responder(gateway.nc, "resource.cmd.list", fixed(reply)):
        started = asyncio.get_running_loop().time()
        r = await api.get("/api/v1/build-servers", params={"q": f"fleet-{tag}", "page": 3,
                                                           "size": 50})
        first_s = asyncio.get_running_loop().time() - started
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == 2000 and page["page"] == 3 and len(page["items"]) == 50
        assert page["items"][0]["name"] == f"fleet-{tag}-0100"
        one = await api.get("/api/v1/build-servers", params={"q": f"fleet-{tag}-1999"})
        assert [i["name"] for i in one.json()["items"]] == [f"fleet-{tag}-1999"]
        started = asyncio.get_running_loop().time()
        html = await api.get("/build-servers", params={"q": f"fleet-{tag}"},
                             headers={"Accept": "text/html"})
        assert html.status_code in (200, 303)  # pages need a session; the API does not
        cached = await api.get("/api/v1/build-servers", params={"q": f"fleet-{tag}"})
        cached_s = asyncio.get_running_loop().time() - started
        assert cached.json()["total"] == 2000
    print(f"\n[gateway] 2000 servers: first page {first_s * 1000:.0f} ms, "
          f"cached page {cached_s * 1000:.0f} ms")
    assert first_s < 5.0


# ---- builds, logs and artifacts -------------------------------------------------------


def build_view(build_id: uuid.UUID, status: BuildStatus = BuildStatus.RUNNING,
               artifacts: list[ArtifactInfo] | None = None) -> BuildView:
    return BuildView(build_id=build_id, spec=BuildSpec(repo_url="https://git.example.invalid/r.git", ref="main",
                                                       arch=Arch.X86_64),
                     status=status, created_at=datetime.now(UTC), artifacts=artifacts or [])


async def test_submit_maps_the_schedulers_answers(gateway: RunningGateway) -> None:
    spec = {"repo_url": "https://git.example.invalid/r.git", "ref": "main", "arch": "arm64", "server": "bs-1"}
    build_id = uuid.uuid4()
    async with gateway.client() as api:
        async with responder(gateway.nc, "build.cmd.submit", fixed(SubmitBuildReply(
                ok=True, build_id=build_id, position=2, estimated_start_s=90.0))):
            r = await api.post("/api/v1/builds", json=spec)
        assert r.status_code == 202, r.text
        assert r.json() == {"id": str(build_id), "status": "queued", "position": 2,
                            "estimated_start_s": 90.0, "url": f"/api/v1/builds/{build_id}"}
        refused = SubmitBuildReply(ok=False, alternatives=["bs-2", "bs-3"], error=ErrorInfo(
            code="missing_toolchain", message="bs-1 has no aarch64-linux-gnu-gcc"))
        async with responder(gateway.nc, "build.cmd.submit", fixed(refused)):
            r = await api.post("/api/v1/builds", json=spec)
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "missing_toolchain" and err["field"] == "server"
        assert err["details"]["alternatives"] == ["bs-2", "bs-3"]
        r = await api.post("/api/v1/builds", json={**spec, "arch": "sparc"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "arch"


async def test_log_is_returned_and_followed_until_the_last_chunk(
        gateway: RunningGateway) -> None:
    build_id = uuid.uuid4()
    js = gateway.nc.jetstream()
    subject = f"log.build.{build_id}"

    async def put(seq: int, text: str, eof: bool = False) -> None:
        chunk = LogChunk(build_id=build_id, seq=seq, at=datetime.now(UTC), text=text, eof=eof)
        await js.publish(subject, chunk.model_dump_json().encode())

    await put(1, "make -j4\n")
    await put(2, "cc -o hello hello.c\n")
    async with gateway.client() as api, \
            responder(gateway.nc, "build.cmd.get", fixed(BuildReply(
                ok=True, build=build_view(build_id)))):
        stored = await api.get(f"/api/v1/builds/{build_id}/log")
        assert stored.status_code == 200
        assert stored.text == "make -j4\ncc -o hello hello.c\n"
        assert stored.headers["content-type"].startswith("text/plain")

        async def finish_later() -> None:
            await asyncio.sleep(0.5)
            await put(3, "build done\n")
            await asyncio.sleep(0.3)
            await put(4, "", eof=True)

        task = asyncio.create_task(finish_later())
        started = asyncio.get_running_loop().time()
        followed = await api.get(f"/api/v1/builds/{build_id}/log", params={"follow": 1})
        took = asyncio.get_running_loop().time() - started
        await task
        assert followed.text == "make -j4\ncc -o hello hello.c\nbuild done\n"
        assert 0.7 < took < 10
        empty_id = uuid.uuid4()
    async with gateway.client() as api, \
            responder(gateway.nc, "build.cmd.get", fixed(BuildReply(
                ok=True, build=build_view(empty_id)))):
        empty = await api.get(f"/api/v1/builds/{empty_id}/log")
        assert empty.status_code == 200 and empty.text == ""
    async with gateway.client() as api, \
            responder(gateway.nc, "build.cmd.get", fixed(BuildReply(ok=False, error=ErrorInfo(
                code="not_found", message="no such build")))):
        missing = await api.get(f"/api/v1/builds/{uuid.uuid4()}/log")
        assert missing.status_code == 404


async def test_artifact_download_streams_the_stored_bytes_with_checksum(
        gateway: RunningGateway) -> None:
    build_id = uuid.uuid4()
    payload = os.urandom(700 * 1024 + 17)  # several object-store chunks
    js = gateway.nc.jetstream()
    store = await artifact_store(js)
    await store.put(f"{build_id}/Image", payload)
    digest = hashlib.sha256(payload).hexdigest()
    info = ArtifactInfo(name="Image", size=len(payload), sha256=digest,
                        object_name=f"{build_id}/Image", bucket="artifacts")
    from labfleet.shared.events.build import ArtifactListReply

    async with gateway.client() as api:
        # the builder's record says where the artifact is stored
        async with responder(gateway.nc, "artifact.cmd.list", fixed(ArtifactListReply(
                ok=True, build_id=build_id, artifacts=[info]))):
            r = await api.get(f"/api/v1/artifacts/{build_id}/Image")
            assert r.status_code == 200
            assert r.content == payload
            assert r.headers["content-length"] == str(len(payload))
            assert r.headers["x-checksum-sha256"] == digest
            missing = await api.get(f"/api/v1/artifacts/{build_id}/nothing.bin")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
            assert "no artifact 'nothing.bin' is recorded" in missing.json()["error"]["message"]
        async with responder(gateway.nc, "artifact.cmd.list", fixed(ArtifactListReply(
                ok=True, build_id=build_id, artifacts=[info]))) as seen:
            listed = await api.get("/api/v1/artifacts", params={"build_id": str(build_id)})
        assert listed.status_code == 200, listed.text
        assert listed.json() == [{"build_id": str(build_id), "name": "Image",
                                  "size": len(payload), "sha256": digest,
                                  "download_url": f"/api/v1/artifacts/{build_id}/Image"}]
        assert json.loads(seen[0])["build_id"] == str(build_id)
        nothing = await api.get("/api/v1/artifacts")
        assert nothing.status_code == 422 and nothing.json()["error"]["field"] == "build_id"


# ---- operations endpoints -------------------------------------------------------------


async def test_healthz_reports_each_service_up_or_down(gateway: RunningGateway) -> None:
    async with gateway.anonymous() as http:
        r = await http.get("/healthz")
        assert r.status_code == 503
        services = r.json()["services"]
        assert services["gateway"]["status"] == "up"
        assert services["inventory"]["status"] == "down"
        assert "no instance" in services["inventory"]["error"]

        def pong(name: str):  # noqa: ANN202
            return fixed(Pong(service=name, instance="test", started_at=datetime.now(UTC),
                              version="0"))

        names = ("inventory", "monitor", "scheduler", "builder", "deployer", "alerter")
        async with responder(gateway.nc, "system.cmd.ping.inventory", pong("inventory")), \
                responder(gateway.nc, "system.cmd.ping.monitor", pong("monitor")), \
                responder(gateway.nc, "system.cmd.ping.scheduler", pong("scheduler")):
            partly = await http.get("/healthz")
            assert partly.status_code == 503
            assert partly.json()["services"]["builder"]["status"] == "down"
            async with responder(gateway.nc, "system.cmd.ping.builder", pong("builder")), \
                    responder(gateway.nc, "system.cmd.ping.deployer", pong("deployer")), \
                    responder(gateway.nc, "system.cmd.ping.alerter", pong("alerter")):
                all_up = await http.get("/healthz")
        assert all_up.status_code == 200, all_up.text
        assert all_up.json()["status"] == "ok"
        assert all(all_up.json()["services"][n]["status"] == "up" for n in names)


async def test_asyncapi_lists_the_subjects_of_every_buildable_service(
        gateway: RunningGateway) -> None:
    import importlib.util

    async with gateway.anonymous() as http:
        r = await http.get("/asyncapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert doc["asyncapi"].startswith("3.")
        addresses = {c["address"] for c in doc["channels"].values()}
        assert "system.cmd.ping.gateway" in addresses
        missing = doc.get("x-labfleet-missing", {})
        # subjects each service serves, when that service is in this checkout
        served = {"inventory": "resource.cmd.register_build_server",
                  "monitor": "health.cmd.history", "scheduler": "build.cmd.submit",
                  "builder": "build.cmd.get"}
        for name, subject in served.items():
            if importlib.util.find_spec(f"labfleet.{name}.main") is None:
                assert "no module" in missing[name]
                continue
            # an importable service must render: a broken schema is a defect, not a gap
            assert name not in missing, missing.get(name)
            assert f"system.cmd.ping.{name}" in addresses, name
            assert subject in addresses, (name, subject)
        page = await http.get("/asyncapi")
        assert page.status_code == 200 and "system.cmd.ping.gateway" in page.text
        openapi = await http.get("/openapi.json")
        assert "/api/v1/build-servers" in openapi.json()["paths"]


async def test_metrics_count_requests_by_route(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        await api.get(f"/api/v1/builds/{uuid.uuid4()}")  # 503: no builder
        r = await api.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'labfleet_gateway_requests_total{method="GET",route="/api/v1/builds/{build_id}",' \
           'status="503"}' in text
    assert "labfleet_gateway_request_seconds_bucket" in text
    assert "labfleet_gateway_sse_clients" in text
