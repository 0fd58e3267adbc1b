"""The embedded nats-server after a supervisor that could not stop it (SIGKILL, OOM)."""
from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest

from labfleet.embedded.nats import start_nats, stop_orphan

pytestmark = pytest.mark.integration


async def test_a_server_left_running_is_stopped_before_another_starts(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    first = start_nats(data)  # its supervisor dies: nobody stops it
    nc = await nats.connect(first.operator_url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.one", b"kept")
    await nc.close()
    second = None
    try:
        second = start_nats(data)
        assert first.process.wait(15) is not None  # the orphan was stopped first
        nc = await nats.connect(second.operator_url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1  # the store carried over, written by one server
        await nc.close()
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_a_pid_file_naming_another_program_is_left_alone(tmp_path: Path) -> None:
    pid_file = tmp_path / "nats.pid"
    pid_file.write_text(str(os.getpid()))  # reused by a program that is no nats-server
    assert stop_orphan(pid_file, tmp_path / "nats.conf") is None
    assert stop_orphan(tmp_path / "missing.pid", tmp_path / "nats.conf") is None


@pytest.mark.parametrize("sync_always", [True, False])
async def test_every_write_is_synced_unless_a_benchmark_asks_for_natss_default(
        tmp_path: Path, sync_always: bool) -> None:
    server = start_nats(tmp_path / "nats", sync_always=sync_always)
    try:
        conf = (tmp_path / "nats" / "nats.conf").read_text()
        assert ("sync_interval: always" in conf) is sync_always
        nc = await nats.connect(server.operator_url)
        js = nc.jetstream()
        await js.add_stream(name="SYNCED", subjects=["synced.>"])
        ack = await js.publish("synced.one", b"stored")
        assert ack.seq == 1  # JetStream runs and stores with either setting
        await nc.close()
    finally:
        server.stop()
