"""Simulated SSH hosts answer the monitor's real poll command and can go silent."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from labfleet.lab import sim
from labfleet.shared.ssh import Credentials, RemoteCommandFailed, SshPool


def test_answers_parse_and_change_over_time() -> None:
    sampling = pytest.importorskip("labfleet.monitor.domain.sampling")
    host = sim.SimHost(name="sim00001", port=0, seed=1, boot=0.0, user=10, idle=100)
    command = subprocess.list2cmdline(["sh", "-c", sampling.POLL_SCRIPT, sampling.POLL_NAME, "."])
    first = sampling.parse_poll_output(sim.answer(host, command))
    second = sampling.parse_poll_output(sim.answer(host, command))
    assert second.cpu.total > first.cpu.total  # /proc/stat counters advance
    assert 0 < first.mem_available_kb < first.mem_total_kb
    assert 0 < first.disk_free_bytes < first.disk_total_bytes
    assert first.cpu_cores == 8


async def test_simulated_hosts_serve_ssh_with_own_keys_and_go_silent(tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    from labfleet.embedded.ports import free_port

    base = free_port("127.0.0.1")
    workers, hosts = await asyncio.to_thread(sim.start, 4, tmp_path / "sim", str(key) + ".pub",
                                             "", base, 1)
    pool = SshPool(connect_timeout=5, command_timeout=3)
    creds = Credentials(username="lab", private_key=key.read_text())
    try:
        assert len({h["host_key"] for h in hosts}) == 4  # a key of its own per host
        for h in hosts:
            r = await pool.run(h["address"], h["ssh_port"], creds, h["host_key"],
                               ["sh", "-c", "echo @loadavg; cat /proc/loadavg"])
            assert r.stdout.splitlines()[0] == "@loadavg"
            assert len(r.stdout.splitlines()[1].split()) == 5
        (tmp_path / "sim" / "silent").write_text(hosts[0]["name"] + "\n")
        await asyncio.sleep(1.5)
        with pytest.raises(RemoteCommandFailed) as silent:
            await pool.run(hosts[0]["address"], hosts[0]["ssh_port"], creds, hosts[0]["host_key"],
                           ["cat", "/proc/loadavg"])
        assert silent.value.exit_status is None  # no answer within the timeout
        r = await pool.run(hosts[1]["address"], hosts[1]["ssh_port"], creds, hosts[1]["host_key"],
                           ["cat", "/proc/loadavg"])
        assert r.exit_status == 0
    finally:
        await pool.close()
        for w in workers:
            w.terminate()
            w.join(5)
