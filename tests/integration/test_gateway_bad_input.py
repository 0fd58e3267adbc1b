"""Bad input through the REST API answers a specific 4xx naming the field, never a 500:
white space in a host name, an empty tag, a NUL character, a newline in an address, a
malformed fingerprint, a port where no SSH server listens; every error status is declared
in the OpenAPI document and a 405 says which methods are allowed; addresses and names are
compared in canonical form; a refused QEMU host keeps no image directory; file:// and
ext:: repository URLs are refused by labfleet itself."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .test_gateway_support import RunningGateway, gateway  # noqa: F401

pytestmark = pytest.mark.integration


def refusal(r, status: int, field: str | None) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    return error


@contextlib.asynccontextmanager
async def services(settings_factory, *names: str) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    import importlib

    from cryptography.fernet import Fernet

    settings = settings_factory(credential_key=Fernet.generate_key().decode())
    running = [importlib.import_module(f"labfleet.{n}.main").create(settings) for n in names]
    for svc in running:
        await svc.start()
    try:
        yield
    finally:
        for svc in reversed(running):
            await svc.stop()


SERVER = {"username": "lab", "password": "secret", "ssh_port": 22}


async def test_white_space_in_a_hostname_is_a_422_naming_it(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        for path in ("/api/v1/build-servers", "/api/v1/qemu-hosts"):
            r = await api.post(path, json={**SERVER, "hostname": "a b", "address": "127.0.0.1"})
            error = refusal(r, 422, "hostname")
            assert "must not contain white space" in error["message"], error


async def test_an_empty_tag_is_a_422_naming_it(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        r = await api.post(f"/api/v1/builds/{uuid.uuid4()}/tag", json={"tags": [""]})
        error = refusal(r, 422, "tags.0")
        assert "1-100 characters" in error["message"], error


async def test_a_nul_character_is_refused_before_postgresql(gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        r = await api.post("/api/v1/tokens", json={"name": "a\u0000b"})
        error = refusal(r, 422, "name")
        assert "NUL character" in error["message"], error
        r = await api.post(f"/api/v1/build-servers/{uuid.uuid4()}/maintenance",
                           json={"reason": "disk\u0000"})
        assert "NUL character" in refusal(r, 422, "reason")["message"]


async def test_a_newline_in_an_address_is_named_not_an_idna_error(
        gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        r = await api.post("/api/v1/build-servers",
                           json={**SERVER, "hostname": "nl", "address": "127.0.0.1\n"})
        error = refusal(r, 422, "address")
        assert "U+000A" in error["message"] and "idna" not in error["message"].lower(), error


async def test_a_malformed_fingerprint_is_not_a_changed_host_key(
        gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        r = await api.post("/api/v1/build-servers", json={
            **SERVER, "hostname": "fp", "address": "127.0.0.1",
            "expected_host_key_fingerprint": "SHA256:not-base64!"})
        error = refusal(r, 422, "expected_host_key_fingerprint")
        assert error["code"] == "validation_failed", error
        assert "malformed" in error["message"] and "changed" not in error["message"], error


async def test_a_port_without_an_ssh_server_says_so(
        gateway: RunningGateway, settings_factory) -> None:  # type: ignore[no-untyped-def]
    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    not_ssh = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = not_ssh.sockets[0].getsockname()[1]
    try:
        async with services(settings_factory, "inventory"), gateway.client() as api:
            r = await api.post("/api/v1/build-servers", json={
                **SERVER, "hostname": f"nossh-{uuid.uuid4().hex[:6]}",
                "address": "127.0.0.1", "ssh_port": port})
    finally:
        not_ssh.close()
    error = refusal(r, 422, "ssh_port")
    assert error["code"] == "not_ssh", error
    assert f"no SSH server answered on 127.0.0.1:{port}" in error["message"], error
    assert "check the SSH port" in error["hint"], error


async def test_every_error_status_is_declared_and_405_names_the_methods(
        gateway: RunningGateway) -> None:
    async with gateway.client() as api:
        schema = (await api.get("/openapi.json")).json()
        for path, item in schema["paths"].items():
            if not path.startswith("/api/v1/"):
                continue
            for method, operation in item.items():
                declared = set(operation["responses"])
                assert {"401", "404", "409", "422", "502", "503", "504"} <= declared, \
                    (method, path, sorted(declared))
        r = await api.put("/api/v1/build-servers")
        assert r.status_code == 405, r.text
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}, r.headers
        r = await api.put(f"/api/v1/build-servers/{uuid.uuid4()}")
        assert set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}, r.headers
        # a literal path beside a templated one that also matches it: the literal's methods
        r = await api.options("/api/v1/build-servers/maintenance")
        assert r.status_code == 405 and r.headers["allow"] == "GET", r.headers


async def test_a_short_address_or_a_name_in_capitals_is_no_second_copy(
        gateway: RunningGateway, settings_factory, sshd, unique) -> None:  # type: ignore[no-untyped-def]
    name = f"canon-{unique}"
    login = {"ssh_port": sshd.port, "username": sshd.username,
             "private_key": sshd.private_key}
    async with services(settings_factory, "inventory"), gateway.client() as api:
        first = await api.post("/api/v1/build-servers",
                               json={**login, "hostname": name, "address": "127.0.0.1"})
        assert first.status_code == 201, first.text
        assert first.json()["ssh"]["address"] == "127.0.0.1"
        try:
            # 127.1 is 127.0.0.1 (as 10.231.11 is 10.231.0.11): the same server again
            again = await api.post("/api/v1/build-servers",
                                   json={**login, "hostname": f"{name}-b", "address": "127.1"})
            error = refusal(again, 409, "address")
            assert error["code"] == "duplicate_address" and "127.0.0.1" in error["message"]
            upper = await api.post("/api/v1/build-servers",
                                   json={**login, "hostname": name.upper(),
                                         "address": "127.0.0.2"})
            assert refusal(upper, 409, "hostname")["code"] == "duplicate_name"
        finally:
            await api.delete(f"/api/v1/build-servers/{first.json()['id']}",
                             params={"force": "true"})


async def test_a_refused_qemu_host_keeps_no_image_directory(
        gateway: RunningGateway, settings_factory, sshd, unique, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image_dir = tmp_path / "made-by-registration" / "images"
    async with services(settings_factory, "inventory"), gateway.client() as api:
        r = await api.post("/api/v1/qemu-hosts", json={
            "hostname": f"qemu-{unique}", "address": sshd.host, "ssh_port": sshd.port,
            "username": sshd.username, "private_key": sshd.private_key,
            # more vCPUs than any host here has: refused whatever libvirt says
            "allocatable_vcpus": 4096, "image_dir": str(image_dir)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("over_allocation", "libvirt_unavailable",
                                         "missing_emulator"), r.text
    assert not (tmp_path / "made-by-registration").exists()


async def test_file_and_ext_repository_urls_are_refused(
        gateway: RunningGateway, settings_factory) -> None:  # type: ignore[no-untyped-def]
    build = {"arch": "x86_64", "ref": "main"}
    async with gateway.client() as api:
        for url, why in (("file:///srv/mirrors/other.git", "other builds' mirrors"),
                         ("/srv/mirrors/other.git", "other builds' mirrors"),
                         ("ext::sh -c touch% /tmp/pwned", "runs a command")):
            r = await api.post("/api/v1/builds", json={**build, "repo_url": url})
            error = refusal(r, 422, "repo_url")
            assert error["code"] == "url_scheme_refused" and why in error["message"], error
            assert "LABFLEET_BUILD_ALLOWED_URL_SCHEMES" in error["hint"], error
    # the scheduler refuses it too, whoever sends the command
    from labfleet.shared.events.build import BuildSpec, SubmitBuild, SubmitBuildReply

    async with services(settings_factory, "scheduler"):
        cmd = SubmitBuild(spec=BuildSpec(repo_url="file:///srv/x.git", arch="x86_64"))
        msg = await gateway.nc.request(SubmitBuild.subject, cmd.model_dump_json().encode(),
                                       timeout=15)
    reply = SubmitBuildReply.model_validate_json(msg.data)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "url_scheme_refused" and reply.error.field == "repo_url"


async def test_an_allowed_scheme_is_an_admin_choice(gateway: RunningGateway) -> None:
    settings = gateway.gateway.settings
    before = settings.build_allowed_url_schemes
    object.__setattr__(settings, "build_allowed_url_schemes", "https")
    try:
        async with gateway.client() as api:
            r = await api.post("/api/v1/builds", json={
                "arch": "x86_64", "repo_url": "git@example.invalid:team/linux.git"})
        error = refusal(r, 422, "repo_url")
        assert error["details"]["scheme"] == "ssh" and error["details"]["allowed"] == ["https"]
    finally:
        object.__setattr__(settings, "build_allowed_url_schemes", before)
