"""The one log writer and reader (build logs and consoles) against a real JetStream."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from labfleet.builder.adapters.log_stream import BuildLog
from labfleet.deployer.adapters.console_log import ConsoleLog
from labfleet.shared.bus import ensure_streams
from labfleet.shared.events.build import LogChunk, log_subject
from labfleet.shared.events.env import ConsoleChunk, console_subject
from labfleet.shared.logstream import read_chunks

pytestmark = pytest.mark.integration


async def _all(it) -> list:  # type: ignore[no-untyped-def]
    return [c async for c in it]


async def test_build_log_numbering_goes_on_after_a_restart_and_keeps_a_tail(nc) -> None:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    await ensure_streams(js)
    build_id = uuid.uuid4()
    first = await BuildLog(js, build_id, attempt=1).open()
    # a character split across two reads arrives whole
    euro = "€".encode()
    await first.write_bytes(b"make: start " + euro[:1])
    await first.write_bytes(euro[1:] + b"\nline two\npartial")
    assert first.last_lines() == ["make: start €", "line two", "partial"]

    again = await BuildLog(js, build_id, attempt=2).open()  # a builder restarted mid-build
    assert again.seq == first.seq
    await again.close("build failed")

    chunks = await _all(read_chunks(js, log_subject(build_id), LogChunk, follow=False))
    assert [c.seq for c in chunks] == [1, 2, 3]
    assert "".join(c.text for c in chunks).startswith("make: start €\nline two\npartial")
    assert [c.attempt for c in chunks] == [1, 1, 2]
    assert chunks[-1].eof and not chunks[0].eof


async def test_a_chunk_published_twice_is_stored_once(nc) -> None:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    await ensure_streams(js)
    env_id = uuid.uuid4()
    console = await ConsoleLog(js, env_id, deployment=1).open()
    await console.write("login: ")
    console.seq -= 1  # the same chunk again, as after a crash between publish and ack
    await console.write("login: ")
    chunks = await _all(read_chunks(js, console_subject(env_id), ConsoleChunk, follow=False))
    assert [(c.seq, c.text) for c in chunks] == [(1, "login: ")]


async def test_an_empty_log_reads_as_nothing_at_once(nc) -> None:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    await ensure_streams(js)
    started = asyncio.get_running_loop().time()
    chunks = await _all(read_chunks(js, log_subject(uuid.uuid4()), LogChunk, follow=False,
                                    idle_timeout=5.0))
    assert chunks == []
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_follow_waits_for_the_newest_end_of_run(nc) -> None:  # type: ignore[no-untyped-def]
    """A console spans deployments: following it stops at the end of the newest one,
    not at an older deployment's end."""
    js = nc.jetstream()
    await ensure_streams(js)
    env_id = uuid.uuid4()
    one = await ConsoleLog(js, env_id, deployment=1).open()
    await one.write("boot 1\n")
    await one.write("end 1\n", eof=True)
    two = await ConsoleLog(js, env_id, deployment=2).open()
    await two.write("boot 2\n")

    async def finish_later() -> None:
        await asyncio.sleep(0.5)
        await two.write("end 2\n", eof=True)

    writer = asyncio.create_task(finish_later())
    chunks = await asyncio.wait_for(
        _all(read_chunks(js, console_subject(env_id), ConsoleChunk, follow=True,
                         follow_timeout=10.0)), timeout=15.0)
    await writer
    assert [(c.deployment, c.text) for c in chunks] == [
        (1, "boot 1\n"), (1, "end 1\n"), (2, "boot 2\n"), (2, "end 2\n")]
