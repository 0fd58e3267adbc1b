"""Benchmark of the emulated lab.  Last stdout line: one JSON object.

- ``up_s``: bringing up a 2 build server / 2 QEMU host / 3 board lab from nothing, images
  cached (median of ``--rounds`` runs; the lab is taken down between them);
- ``mem_per_host_mb``: proportional set size (PSS) of every process in the lab's host
  namespaces (holders, sshd, libvirtd, virtlogd, ser2net, pdudaemon), per host;
- ``sim_hosts_served``: simulated SSH hosts that answered every poll within its 10 s
  period, polled by separate client processes with the monitor's own poll command;
  ``sim_hosts_per_process`` is that divided by the sim's server processes.

Needs root.  Uses its own lab directory (``/var/lib/labfleet-lab-bench``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def bench_up(rounds: int) -> tuple[float, float]:
    from labfleet.lab import lab
    from labfleet.lab.images import build_all
    from labfleet.lab.netns import netns_pids
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env("/var/lib/labfleet-lab-bench")
    build_all(paths, lambda m: print(m, file=sys.stderr))  # images cached before timing
    lab.down(paths, say=lambda m: None)
    times, mem = [], 0.0
    for _ in range(rounds):
        started = time.monotonic()
        state = lab.up(lab.LabSpec(build_servers=2, qemu_hosts=2, boards=3), paths,
                       say=lambda m: print(m, file=sys.stderr))
        times.append(time.monotonic() - started)
        pids = {p for h in state.hosts.values() for p in netns_pids(h.netns)}
        mem = sum(_pss_kb(p) for p in pids) / 1024 / len(state.hosts)
        lab.down(paths, say=lambda m: None)
    return statistics.median(times), mem


def _poll_client(hosts: list[dict], key_file: str, period: float, duration: float,
                 out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import asyncssh

    from labfleet.monitor.domain.sampling import parse_poll_output, poll_argv
    import shlex

    command = shlex.join(poll_argv(None))

    async def main() -> dict[str, bool]:
        key = asyncssh.read_private_key(key_file)
        ok = {h["name"]: True for h in hosts}
        sem = asyncio.Semaphore(100)

        async def connect(h: dict):  # type: ignore[no-untyped-def]
            async with sem:
                return await asyncssh.connect(
                    h["address"], h["ssh_port"], username="lab", client_keys=[key],
                    known_hosts=([asyncssh.import_public_key(h["host_key"])], [], []),
                    agent_path=None, config=None)

        conns = await asyncio.gather(*(connect(h) for h in hosts), return_exceptions=True)
        for h, c in zip(hosts, conns):
            if isinstance(c, BaseException):
                ok[h["name"]] = False
        loop = asyncio.get_running_loop()
        start = loop.time() + 1

        async def poll(h: dict, conn, offset: float) -> None:  # type: ignore[no-untyped-def]
            t = start + offset
            while t < start + duration:
                await asyncio.sleep(max(0, t - loop.time()))
                try:
                    async with asyncio.timeout(period):
                        r = await conn.run(command, check=True)
                    parse_poll_output(str(r.stdout))
                except Exception:  # noqa: BLE001 - any failure means not served
                    ok[h["name"]] = False
                    return
                t += period

        n = len(hosts)
        await asyncio.gather(*(poll(h, c, period * i / n) for i, (h, c) in
                               enumerate(zip(hosts, conns)) if not isinstance(c, BaseException)))
        for c in conns:
            if not isinstance(c, BaseException):
                c.close()
        return ok

    out.put(asyncio.run(main()))


def bench_sim(count: int, server_processes: int, clients: int, duration: float,
              base_port: int) -> int:
    from labfleet.lab import sim

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        key = d / "key"
        os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
        workers, listing = sim.start(count, d / "sim", str(key) + ".pub", "", base_port,
                                     server_processes)
        try:
            ctx = multiprocessing.get_context("spawn")
            queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
            procs = [ctx.Process(target=_poll_client,
                                 args=(listing[i::clients], str(key), 10.0, duration, queue))
                     for i in range(clients)]
            for p in procs:
                p.start()
            results: dict[str, bool] = {}
            for _ in procs:
                results.update(queue.get(timeout=duration + 300))
            for p in procs:
                p.join()
            return sum(results.values())
        finally:
            for w in workers:
                w.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sim-hosts", type=int, default=2000)
    parser.add_argument("--sim-processes", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--skip-up", action="store_true")
    parser.add_argument("--base-port", type=int, default=30000)
    args = parser.parse_args()
    result: dict[str, float | int] = {}
    if not args.skip_up:
        up_s, mem = bench_up(args.rounds)
        result.update(up_s=round(up_s, 2), mem_per_host_mb=round(mem, 1))
    served = bench_sim(args.sim_hosts, args.sim_processes, args.clients, args.duration,
                       args.base_port)
    result.update(sim_hosts_served=served, sim_server_processes=args.sim_processes,
                  sim_hosts_per_process=served // max(1, args.sim_processes),
                  sim_hosts_offered=args.sim_hosts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
