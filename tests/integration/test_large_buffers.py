"""The allocator settings for large buffers (``labfleet.shared.memory``), measured where
they matter: storing an artifact into the real object store, in a fresh process each
time, counting the page faults of the store alone."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STORE = r"""
import asyncio, os, resource, sys
import nats
from labfleet.builder.adapters.artifact_store import ArtifactStore
from labfleet.shared.memory import keep_large_buffers

url, bucket, mode = sys.argv[1:4]
if mode == "tuned":
    assert keep_large_buffers()

class Memory:
    def __init__(self, data):
        self.view, self.at = memoryview(data), 0
    async def read(self, n):
        out = self.view[self.at:self.at + n].tobytes()
        self.at += len(out)
        return out

async def main():
    data = os.urandom(64 << 20)
    nc = await nats.connect(url)
    store = ArtifactStore(nc.jetstream, bucket=bucket)
    # the bucket, the connection, and the heap grown to what one upload holds at once
    await store.upload("warm-up", Memory(data[:24 << 20]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    stored = await store.upload("Image", Memory(data))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert stored.size == len(data)
    await nc.jetstream().delete_object_store(bucket)
    await nc.close()
    print(faults)

asyncio.run(main())
"""


def page_faults(nats_url: str, bucket: str, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STORE, nats_url, bucket, mode],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip())


def test_storing_an_artifact_reuses_mapped_pages(nats_url: str, unique: Any) -> None:
    default = page_faults(nats_url, f"test-faults-a-{unique}", "default")
    tuned = page_faults(nats_url, f"test-faults-b-{unique}", "tuned")
    # by default the chunks' copies keep arriving as fresh mappings (measured for these
    # 64 MiB: about 23,000 faults in 4 MiB chunks, 3,000 in a 1 MiB-payload server's);
    # tuned, the pages the warm-up mapped are reused (measured: under 10)
    assert default > 1_000, default
    assert tuned * 4 < default, (default, tuned)
