"""The builder's artifact upload against a real sshd and real JetStream: objects of several
chunks read over SFTP, stored in the object store's own layout (read back by nats-py's
standard ``ObjectStore.get``, which checks the digest, and by the gateway's stream),
replaced, failed half-way, and verified against the file on the server."""
from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from labfleet.builder.adapters.artifact_store import CHUNK, ArtifactStore
from labfleet.builder.adapters.remote import BuildHost
from labfleet.builder.domain.errors import BuildError

from tests.artifact_helpers import Breaks, build_host, make_attempt
from tests.artifact_helpers import server_file as place_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def store(nc: Any, unique: str) -> AsyncIterator[ArtifactStore]:
    bucket = f"test-artifacts-{unique}"
    yield ArtifactStore(nc.jetstream, bucket=bucket)
    await nc.jetstream().delete_object_store(bucket)


@pytest.fixture
async def host(sshd: Any) -> AsyncIterator[BuildHost]:
    async with build_host(sshd, "store-test") as h:
        yield h


def server_file(sshd: Any, name: str, data: bytes) -> Path:
    return place_file(sshd, name, data, folder="files")


async def stream_chunk_count(nc: Any, bucket: str) -> int:
    from nats.js.api import StreamInfo

    info: StreamInfo = await nc.jetstream().stream_info(f"OBJ_{bucket}",
                                                         subjects_filter=f"$O.{bucket}.C.>")
    return sum((info.state.subjects or {}).values())


async def test_multi_chunk_artifact_round_trips_with_its_digest(
        sshd: Any, host: BuildHost, store: ArtifactStore, nc: Any) -> None:
    data = os.urandom(3 * CHUNK + 12_345)
    path = server_file(sshd, "Image", data)
    async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
        stored = await store.upload("b1/Image", remote, metadata={"build_id": "b1",
                                                                  "toolchain": "gcc 12"})
    digest = hashlib.sha256(data).hexdigest()
    assert (stored.size, stored.sha256, stored.stored_sha256) == (len(data), digest, digest)

    # a standard client reads it back and checks the digest itself
    bucket = await nc.jetstream().object_store(store.bucket)
    got = await bucket.get("b1/Image")
    assert got.data == data
    assert got.info.chunks == 4 and got.info.size == len(data)
    assert got.info.headers == {"Labfleet-Build-Id": ["b1"], "Labfleet-Toolchain": ["gcc 12"]}
    assert got.info.options.max_chunk_size == CHUNK

    # the gateway's download stream, chunk by chunk, digest checked at the end
    from labfleet.shared import artifacts as state

    obj = state.StoredObject(name="b1/Image", size=len(data), sha256_hex=digest,
                             bucket=store.bucket, nuid=got.info.nuid)
    js = nc.jetstream()
    assert await streamed(js, obj) == data  # batched direct gets, one batch
    batch_bytes = state.BATCH_BYTES
    state.BATCH_BYTES = CHUNK + 1  # a batch of one or two chunks: several batches
    requests = count_direct_gets(nc)
    try:
        assert await streamed(js, obj) == data
    finally:
        state.BATCH_BYTES = batch_bytes
        del nc.publish
    assert 2 <= len(requests) <= 4
    # a stream that allows no direct gets is read through a consumer
    info = await js.stream_info(f"OBJ_{store.bucket}")
    info.config.allow_direct = False
    await js.update_stream(info.config)
    assert await streamed(js, obj) == data
    info.config.allow_direct = True
    await js.update_stream(info.config)
    # a wrong digest, or chunks gone, fail the stream instead of ending it quietly
    with pytest.raises(state.ArtifactCorrupt):
        await streamed(js, state.StoredObject(name="b1/Image", size=len(data),
                                              sha256_hex="00" * 32, bucket=store.bucket,
                                              nuid=got.info.nuid))
    # the build's record is what counts, where the caller has one
    with pytest.raises(state.ArtifactCorrupt, match="the build recorded 1111"):
        await streamed(js, obj, expect_sha256="11" * 32)
    await js.purge_stream(f"OBJ_{store.bucket}", subject=f"$O.{store.bucket}.C.{obj.nuid}")
    with pytest.raises(state.ArtifactCorrupt):
        await streamed(js, obj)


def count_direct_gets(nc: Any) -> list[bytes]:
    """Record the direct-get requests published on ``nc`` (undone by ``del nc.publish``)."""
    requests: list[bytes] = []
    publish = nc.publish

    async def counting(subject: str, payload: bytes = b"", **kw: Any) -> None:
        if subject.startswith("$JS.API.DIRECT.GET."):
            requests.append(payload)
        await publish(subject, payload, **kw)

    nc.publish = counting
    return requests


async def test_a_server_without_batched_direct_gets_is_read_a_chunk_a_request(
        sshd: Any, host: BuildHost, unique: str) -> None:
    """NATS before 2.11 ignores ``batch`` and answers one chunk; the stream goes on."""
    from labfleet.shared import artifacts as state

    try:
        old = await nats.connect(OLD_NATS, connect_timeout=2, allow_reconnect=False)
    except Exception:  # noqa: BLE001
        pytest.skip(f"no NATS server at {OLD_NATS} to play an older server")
    try:
        version = tuple(int(x) for x in old._server_info["version"].split(".")[:2])
        if version >= (2, 11):
            pytest.skip(f"the NATS server at {OLD_NATS} is {version}: it has batches")
        bucket = f"test-artifacts-old-{unique}"
        store = ArtifactStore(old.jetstream, bucket=bucket)
        data = os.urandom(3 * 1024 * 1024 + 77)
        path = server_file(sshd, "old-Image", data)
        async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
            stored = await store.upload("b9/Image", remote)
        info = await (await old.jetstream().object_store(bucket)).get_info("b9/Image")
        assert info.chunks == 4  # its max_payload (1 MB) made the chunks 1 MiB
        obj = state.StoredObject(name="b9/Image", size=len(data), sha256_hex=stored.sha256,
                                 bucket=bucket, nuid=info.nuid)
        requests = count_direct_gets(old)
        try:
            assert await streamed(old.jetstream(), obj) == data
        finally:
            del old.publish
            await old.jetstream().delete_object_store(bucket)
        assert len(requests) == 4
    finally:
        await old.close()


#: a NATS server that may predate batched direct gets (Debian's package is 2.9)
OLD_NATS = os.environ.get("LABFLEET_TEST_OLD_NATS_URL", "nats://127.0.0.1:4222")


async def streamed(js: Any, obj: Any, expect_sha256: str | None = None) -> bytes:
    from labfleet.shared.artifacts import jetstream_stream

    out = b""
    async for chunk in jetstream_stream(js, obj, expect_sha256=expect_sha256):
        out += chunk
    return out


async def test_empty_and_small_chunked_artifacts(sshd: Any, host: BuildHost,
                                                 store: ArtifactStore, nc: Any) -> None:
    empty = server_file(sshd, "empty", b"")
    small = os.urandom(10_000)
    odd = server_file(sshd, "odd", small)
    async with host.sftp() as sftp:
        async with sftp.open(str(empty), "rb") as remote:
            stored = await store.upload("b2/empty", remote)
        async with sftp.open(str(odd), "rb") as remote:
            chunked = await store.upload("b2/odd", remote, chunk_size=3000)
    assert stored.size == 0 and stored.sha256 == hashlib.sha256(b"").hexdigest()
    bucket = await nc.jetstream().object_store(store.bucket)
    assert (await bucket.get("b2/empty")).data == b""
    got = await bucket.get("b2/odd")
    assert got.data == small and got.info.chunks == 4 and chunked.sha256 == stored_hex(small)


def stored_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_replacing_an_object_drops_its_old_chunks(
        sshd: Any, host: BuildHost, store: ArtifactStore, nc: Any) -> None:
    first, second = os.urandom(2 * CHUNK + 1), os.urandom(CHUNK // 2)
    async with host.sftp() as sftp:
        for data in (first, second):
            path = server_file(sshd, "zImage", data)
            async with sftp.open(str(path), "rb") as remote:
                await store.upload("b3/zImage", remote)
    bucket = await nc.jetstream().object_store(store.bucket)
    assert (await bucket.get("b3/zImage")).data == second
    assert await stream_chunk_count(nc, store.bucket) == 1


async def test_a_failed_read_leaves_no_object_and_no_chunks(
        sshd: Any, host: BuildHost, store: ArtifactStore, nc: Any) -> None:
    path = server_file(sshd, "vmlinux", os.urandom(5 * CHUNK))
    async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
        with pytest.raises(ConnectionResetError, match="mid-read"):
            await store.upload("b4/vmlinux", Breaks(remote, reads=1))
    bucket = await nc.jetstream().object_store(store.bucket)
    import nats.js.errors

    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await bucket.get_info("b4/vmlinux")
    assert await stream_chunk_count(nc, store.bucket) == 0


async def test_a_file_changed_after_reading_fails_verification(
        sshd: Any, host: BuildHost, store: ArtifactStore, nc: Any) -> None:
    attempt = await make_attempt(nc, sshd, host, store)
    build_id = attempt.build_id
    data = os.urandom(CHUNK + 7)
    path = server_file(sshd, f"Image-{build_id}", data)
    [info] = await attempt.upload([(str(path), "Image")])  # verified: same bytes
    assert info.sha256 == hashlib.sha256(data).hexdigest()

    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BuildError) as failed:
        await attempt.verify([(str(path), "Image")], [info])
    assert failed.value.code == "artifact_checksum_mismatch"
    assert info.sha256 in str(failed.value)


async def test_readers_go_to_the_recorded_bucket(sshd: Any, host: BuildHost,
                                                 store: ArtifactStore, nc: Any,
                                                 tmp_path: Path) -> None:
    """The deployer's fetch and the retention's delete use the bucket the build recorded
    (here not ``artifacts``), never a default."""
    from labfleet.deployer.adapters.artifacts import ArtifactMissing, ArtifactSource
    from labfleet.shared.artifacts import ArtifactReader
    from labfleet.shared.events.build import ArtifactInfo

    assert store.bucket != "artifacts"
    data = os.urandom(CHUNK + 99)
    path = server_file(sshd, "bzImage", data)
    async with host.sftp() as sftp, sftp.open(str(path), "rb") as remote:
        stored = await store.upload("b7/bzImage", remote)
    info = ArtifactInfo(name="bzImage", size=len(data), sha256=stored.sha256,
                        object_name="b7/bzImage", bucket=store.bucket, backend="jetstream")
    into = tmp_path / "bzImage"
    await ArtifactSource(nc.jetstream).fetch(info, into)
    assert into.read_bytes() == data
    with pytest.raises(ArtifactMissing, match="the build recorded 0000"):
        await ArtifactSource(nc.jetstream).fetch(info.model_copy(update={"sha256": "0" * 64}),
                                                 tmp_path / "bad")
    with pytest.raises(ArtifactMissing, match="not in the object store bucket artifacts"):
        await ArtifactSource(nc.jetstream).fetch(info.model_copy(update={"bucket": "artifacts"}),
                                                 tmp_path / "elsewhere")
    reader = ArtifactReader(nc.jetstream, who="builder")
    await reader.delete(info)
    await reader.delete(info)  # gone already: no error
    with pytest.raises(ArtifactMissing, match=f"not in the object store bucket {store.bucket}"):
        await ArtifactSource(nc.jetstream).fetch(info, tmp_path / "gone")
