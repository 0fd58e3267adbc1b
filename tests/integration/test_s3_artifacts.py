"""Artifacts in an S3-compatible store (``LABFLEET_ARTIFACT_STORE=s3``), end to end against
a real S3 HTTP server and a real sshd: the builder's upload path (SFTP read, multipart
upload, metadata, verification), the gateway's download stream, the deployer's fetch,
retention, an upload failed half-way, checksum mismatches, and a whole build through the
builder service stored in S3 and expired by retention.

The S3 server is moto's (``moto[server]``, see ``tests/s3server.py`` for why not a real
store's implementation): it speaks S3's HTTP protocol on a loopback port, started once for
the module.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from labfleet.builder.adapters.remote import BuildHost
from labfleet.builder.adapters.s3_store import PART_SIZE, S3ArtifactStore
from labfleet.builder.config import BuilderConfig
from labfleet.builder.domain.errors import BuildError
from labfleet.deployer.adapters.artifacts import ArtifactMissing, ArtifactSource
from labfleet.shared.events.build import ArtifactInfo, BuildStatus
from labfleet.shared.events.resource import Arch
from labfleet.shared.s3 import S3ObjectCorrupt, S3Store
from labfleet.shared.settings import S3Config
from pydantic import SecretStr

from tests.artifact_helpers import Breaks, build_host, make_attempt
from tests.artifact_helpers import server_file as place_file
from tests.s3server import S3Server, start_s3_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    print(f"\n[labfleet tests] S3: moto's S3 server at {server.endpoint_url}")
    yield server
    server.stop()


def s3_settings(server: S3Server, bucket: str) -> dict[str, Any]:
    return {"artifact_store": "s3", "s3_endpoint_url": server.endpoint_url,
            "s3_bucket": bucket, "s3_region": server.region,
            "s3_access_key_id": server.access_key_id,
            "s3_secret_access_key": server.secret_access_key}


@pytest.fixture
async def s3(s3_server: S3Server, unique: str) -> AsyncIterator[S3Store]:
    store = S3Store(S3Config(endpoint_url=s3_server.endpoint_url, bucket=f"artifacts-{unique}",
                             region=s3_server.region, access_key_id=s3_server.access_key_id,
                             secret_access_key=SecretStr(s3_server.secret_access_key)))
    yield store
    await store.close()


@pytest.fixture
async def host(sshd: Any) -> AsyncIterator[BuildHost]:
    async with build_host(sshd, "s3-test") as h:
        yield h


def server_file(sshd: Any, name: str, data: bytes) -> Path:
    return place_file(sshd, name, data, folder="s3-files")


METADATA = {"build_id": "b", "repository": "https://git.example.org/linux.git",
            "ref": "main", "commit": "c0ffee", "arch": "arm64", "config": "defconfig",
            "toolchain": "aarch64-linux-gnu-gcc (Debian 14.2.0) 14.2.0", "server": "bs-1"}


async def uploads_in_progress(s3: S3Store) -> list[Any]:
    client = await s3.client()
    return (await client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads") or []


async def keys(s3: S3Store) -> list[str]:
    client = await s3.client()
    return [o["Key"] for o in
            (await client.list_objects_v2(Bucket=s3.bucket)).get("Contents") or []]


async def test_a_multipart_upload_through_the_build_path_with_metadata_download_and_fetch(
        s3: S3Store, sshd: Any, host: BuildHost, nc: Any, tmp_path: Path) -> None:
    store = S3ArtifactStore(s3)
    attempt = await make_attempt(nc, sshd, host, store, server_name="s3-test")
    data = os.urandom(2 * PART_SIZE + 12_345)  # three parts, the last a short one
    small = os.urandom(1000)  # one PutObject
    files = [(str(server_file(sshd, f"Image-{attempt.build_id}", data)), "Image"),
             (str(server_file(sshd, f"small-{attempt.build_id}", small)), "dtb")]
    infos = await attempt.upload(files, METADATA)  # verified inside: server, store, read

    digest = hashlib.sha256(data).hexdigest()
    image, dtb = infos
    assert (image.backend, image.bucket, image.size, image.sha256) == (
        "s3", s3.bucket, len(data), digest)
    assert image.object_name == f"{attempt.build_id}/Image"
    assert dtb.backend == "s3" and dtb.sha256 == hashlib.sha256(small).hexdigest()
    assert await uploads_in_progress(s3) == []

    # the object as any S3 client sees it: user metadata, the store's composite checksum
    client = await s3.client()
    head = await client.head_object(Bucket=s3.bucket, Key=image.object_name,
                                    ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"] == {
        "build-id": "b", "repository": "https://git.example.org/linux.git", "ref": "main",
        "commit": "c0ffee", "arch": "arm64", "config": "defconfig",
        "toolchain": "aarch64-linux-gnu-gcc (Debian 14.2.0) 14.2.0", "server": "bs-1",
        "sha256": digest}
    parts = [data[i:i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()
    obj = await s3.head(image.object_name)
    assert obj.metadata["toolchain"] == METADATA["toolchain"] and obj.sha256_hex == digest

    # the gateway's download, from the store the build recorded: headers, then the bytes
    # streamed and checked
    from labfleet.gateway.domain.errors import ApiError
    from labfleet.gateway.routes.api_artifacts import recorded_artifact_response

    for default in ("s3", "jetstream"):  # the service's default store does not matter
        gw = SimpleNamespace(s3=s3, bus=SimpleNamespace(js=nc.jetstream()),
                             settings=SimpleNamespace(artifact_store=default))
        response = await recorded_artifact_response(gw, image)  # type: ignore[arg-type]
        assert response.headers["X-Checksum-SHA256"] == digest
        assert response.headers["Content-Length"] == str(len(data))
        chunks = [c async for c in response.body_iterator]
        assert b"".join(chunks) == data  # type: ignore[arg-type]
        assert max(len(c) for c in chunks) <= 1024 * 1024  # streamed, not read whole
        with pytest.raises(ApiError) as missing:  # recorded, but not in its store
            await recorded_artifact_response(  # type: ignore[arg-type]
                gw, image.model_copy(update={"object_name": f"{attempt.build_id}/nope"}))
        assert (missing.value.status, missing.value.code) == (404, "not_found")

    # the deployer's fetch into a local file, checked against the build's record
    source = ArtifactSource(jetstream=None, s3=s3)
    into = tmp_path / "Image"
    await source.fetch(image, into)
    assert into.read_bytes() == data
    with pytest.raises(ArtifactMissing, match="SHA-256"):
        await source.fetch(image.model_copy(update={"sha256": "0" * 64}), tmp_path / "bad")
    without_s3 = ArtifactSource(jetstream=None)
    with pytest.raises(ArtifactMissing, match="LABFLEET_S3_ENDPOINT_URL"):
        await without_s3.fetch(image, tmp_path / "none")
    with pytest.raises(ArtifactMissing, match="is not in the S3 bucket"):
        await source.fetch(image.model_copy(update={"object_name": "nope/Image"}),
                           tmp_path / "missing")


async def test_an_object_changed_in_the_store_fails_download_and_verification(
        s3: S3Store, sshd: Any, host: BuildHost, nc: Any) -> None:
    store = S3ArtifactStore(s3)
    attempt = await make_attempt(nc, sshd, host, store, server_name="s3-test")
    data = os.urandom(PART_SIZE + 99)
    files = [(str(server_file(sshd, f"Image-{attempt.build_id}", data)), "Image")]
    [info] = await attempt.upload(files, METADATA)

    # someone replaces the bytes but keeps the metadata (and its recorded SHA-256)
    client = await s3.client()
    head = await client.head_object(Bucket=s3.bucket, Key=info.object_name)
    changed = data[:-1] + bytes([data[-1] ^ 1])
    await client.put_object(Bucket=s3.bucket, Key=info.object_name, Body=changed,
                            Metadata=head["Metadata"], ChecksumAlgorithm="SHA256")
    with pytest.raises(BuildError) as failed:
        await attempt.verify(files, [info])
    assert failed.value.code == "artifact_checksum_mismatch"
    assert "S3 ChecksumSHA256" in failed.value.message

    # the gateway's stream ends in an error instead of quietly handing on other bytes
    obj = await s3.head(info.object_name)
    with pytest.raises(S3ObjectCorrupt, match="SHA-256"):
        async for _ in s3.stream(obj):
            pass

    # a store that keeps no checksum: the object is read back and hashed
    await client.put_object(Bucket=s3.bucket, Key=info.object_name, Body=changed,
                            Metadata=head["Metadata"])
    fresh = S3ArtifactStore(s3)  # knows nothing of the upload
    assert await fresh.stored_digest(info.object_name) == hashlib.sha256(changed).hexdigest()


async def test_a_file_changed_on_the_server_fails_verification(
        s3: S3Store, sshd: Any, host: BuildHost, nc: Any) -> None:
    attempt = await make_attempt(nc, sshd, host, S3ArtifactStore(s3), server_name="s3-test")
    data = os.urandom(PART_SIZE + 7)
    path = server_file(sshd, f"Image-{attempt.build_id}", data)
    [info] = await attempt.upload([(str(path), "Image")])
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BuildError) as failed:
        await attempt.verify([(str(path), "Image")], [info])
    assert failed.value.code == "artifact_checksum_mismatch"
    assert info.sha256 in failed.value.message


async def test_an_upload_failed_half_way_leaves_no_object_and_no_parts(
        s3: S3Store, sshd: Any, host: BuildHost) -> None:
    store = S3ArtifactStore(s3)
    path = server_file(sshd, "vmlinux-broken", os.urandom(4 * PART_SIZE))
    async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
        # 4 MiB reads: the fifth read is in the third part, two parts are sent by then
        with pytest.raises(ConnectionResetError, match="mid-read"):
            await store.upload("b4/vmlinux", Breaks(remote, reads=5), sha256="0" * 64)
    assert "b4/vmlinux" not in await keys(s3)
    assert await uploads_in_progress(s3) == []


async def test_a_build_stored_in_s3_and_expired_by_retention(
        s3_server: S3Server, s3: S3Store, settings_factory: Any, nats_url: str, sshd: Any,
        unique: str, tmp_path: Path) -> None:
    """The builder service configured for S3: a real build's artifacts land there, with
    the backend in the build's record, and retention deletes the objects."""
    from tests.integration.test_builder import (
        QUICK_MAKEFILE,
        make_repo,
        scheduler_db,
        start_lab,
        stop_lab,
    )

    def settings(**overrides: object) -> Any:
        return settings_factory(**s3_settings(s3_server, s3.bucket),
                                artifact_retention_days=3.0 / 86400, **overrides)

    lab = await start_lab(settings, nats_url, sshd, unique,
                          builder_config=BuilderConfig(heartbeat_s=1.0,
                                                       retention_interval_s=0.5))
    try:
        repo = make_repo(tmp_path / "hello", QUICK_MAKEFILE)
        await lab.register(lab.server_view(f"bs-{lab.label}"), scheduler_db(lab))
        reply = await lab.submit(repo_url=f"file://{repo}", ref="main", arch=Arch.X86_64,
                                 artifacts=["hello"])
        assert reply.ok and reply.build_id is not None, reply.error
        view = await lab.wait_for(reply.build_id)
        assert view.status == BuildStatus.SUCCEEDED, view.error
        [art] = view.artifacts
        assert (art.backend, art.bucket, art.object_name) == (
            "s3", s3.bucket, f"{reply.build_id}/hello")
        obj = await s3.head(art.object_name)
        assert obj.sha256_hex == art.sha256 and obj.size == art.size
        assert obj.metadata["build_id"] == str(reply.build_id)
        assert obj.metadata["commit"] == view.commit
        from labfleet.gateway.models import BuildPublic

        assert BuildPublic.build(view).artifact_locations == [
            f"s3://{s3.bucket}/{reply.build_id}/hello"]
        [stored] = await lab.settle(reply.build_id, "artifact.stored")
        assert ArtifactInfo(**stored.data["artifact"]).backend == "s3"

        async with asyncio.timeout(30):
            while (await lab.build(reply.build_id)).artifacts_expired_at is None:
                await asyncio.sleep(0.3)
        assert art.object_name not in await keys(s3)
    finally:
        await stop_lab(lab)


async def test_a_store_that_does_not_answer_is_a_clear_error_everywhere(
        sshd: Any, host: BuildHost, nc: Any, tmp_path: Path) -> None:
    from labfleet.embedded.ports import free_port
    from labfleet.gateway.domain.errors import ApiError
    from labfleet.gateway.routes.api_artifacts import recorded_artifact_response

    secret = "do-not-show-this-secret"
    down = S3Store(S3Config(endpoint_url=f"http://127.0.0.1:{free_port()}",
                            bucket="artifacts-down", region="us-east-1",
                            access_key_id="k", secret_access_key=SecretStr(secret)))
    try:
        attempt = await make_attempt(nc, sshd, host, S3ArtifactStore(down), server_name="s3-test")
        path = server_file(sshd, f"Image-{attempt.build_id}", os.urandom(1000))
        with pytest.raises(BuildError) as failed:
            await attempt.upload([(str(path), "Image")])
        assert failed.value.code == "artifact_store_failed"
        assert down.config.endpoint_url in failed.value.message
        assert "LABFLEET_S3_" in (failed.value.hint or "")

        info = ArtifactInfo(name="Image", size=1000, sha256="0" * 64, bucket="artifacts-down",
                            object_name=f"{attempt.build_id}/Image", backend="s3")
        gw = SimpleNamespace(s3=down, bus=SimpleNamespace(js=nc.jetstream()),
                             settings=SimpleNamespace(artifact_store="s3"))
        with pytest.raises(ApiError) as refused:
            await recorded_artifact_response(gw, info)  # type: ignore[arg-type]
        assert (refused.value.status, refused.value.code) == (503,
                                                              "artifact_store_unavailable")

        with pytest.raises(ArtifactMissing, match="the S3 store at .* failed to look up"):
            await ArtifactSource(jetstream=None, s3=down).fetch(info, tmp_path / "Image")
        for message in (failed.value.message, refused.value.message):
            assert secret not in message
    finally:
        await down.close()


async def test_parts_of_growing_sizes_are_verified_like_equal_ones(
        s3: S3Store, sshd: Any, host: BuildHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from labfleet.builder.adapters import s3_store

    monkeypatch.setattr(s3_store, "PARTS_PER_SIZE", 2)  # parts of 5, 5, 10, 10, then 1 MiB
    mib = 1024 * 1024
    data = os.urandom(31 * mib)
    path = server_file(sshd, "rootfs-growing", data)
    store = S3ArtifactStore(s3)
    async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
        stored = await store.upload("b5/rootfs", remote, chunk_size=5 * mib,
                                    sha256=hashlib.sha256(data).hexdigest())
    digest = hashlib.sha256(data).hexdigest()
    # the store's checksum matched the one computed from these five parts
    assert (stored.size, stored.sha256, stored.stored_sha256) == (len(data), digest, digest)
    client = await s3.client()
    parts = [data[:5 * mib], data[5 * mib:10 * mib], data[10 * mib:20 * mib],
             data[20 * mib:30 * mib], data[30 * mib:]]
    head = await client.head_object(Bucket=s3.bucket, Key="b5/rootfs", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(hashlib.sha256(
        b"".join(hashlib.sha256(p).digest() for p in parts)).digest()).decode()
