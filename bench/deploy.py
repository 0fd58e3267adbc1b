"""Benchmark: from "environment requested" to "boot verified" on the emulated lab.

The real scheduler and deployer, the lab's QEMU hosts (libvirtd over qemu+ssh), the lab's
x86_64 tinyconfig kernel.  Each run empties the hosts' artifact caches, creates an
environment, waits for ``deploy.boot_verified``, redeploys the same artifacts (bytes sent
the second time), and releases.  One warm-up run is not counted.

Figures (medians over the runs):
  placement_s   request → env.allocated (artifact lookup, host choice, reservation)
  transfer_s    artifacts to the host's cache (object store → SFTP → sha256sum)
  start_s       domain defined, started paused, console attached, resumed
  boot_s        resume → boot marker on the console (the guest's own boot)
  overhead_s    total − transfer_s − boot_s (target < 1.0)
  redeploy_bytes  bytes sent when the same artifacts are deployed again (target 0)

Last stdout line: one JSON object.  ``LABFLEET_ENV_LAB_DIR`` selects the lab
(default ``/var/lib/labfleet-lab-envs``; brought up if needed, left as found).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNS = int(os.environ.get("LABFLEET_BENCH_RUNS", "3"))


async def one_run(d: Any, pool: Any, lab: dict[str, Any]) -> dict[str, float]:
    from labfleet.shared.events.env import DeployReply, RedeployEnv
    from tests.lab.test_deploy_qemu import IMAGE_DIR, lab_creds, lab_host

    for name in ("qemu1", "qemu2"):
        h = lab_host(lab, name)
        await pool.run(h["address"], h["ssh_port"], lab_creds(lab), h["host_key"],
                       ["rm", "-rf", f"{IMAGE_DIR}/cache"])
    started = time.time()
    reply = await d.fleet.create(d.builds["x86_64"], boot_timeout_s=60)
    assert reply.ok, reply.error
    env_id = reply.env_id
    allocated = await d.fleet.wait_event(env_id, "env.allocated")
    verified = await d.fleet.wait_event(env_id, "deploy.boot_verified", timeout=120)
    allocated_at = next(t for s, e, t in d.fleet.events
                        if s == "env.allocated" and e.get("env_id") == str(env_id))
    verified_at = next(t for s, e, t in d.fleet.events
                       if s == "deploy.boot_verified" and e.get("env_id") == str(env_id))
    assert allocated
    timings = verified[0]["timings"]
    stages = _stages(d.fleet.events, env_id, started)
    total = verified_at - started
    again = await d.fleet.request(RedeployEnv(env_id=env_id), DeployReply)
    assert again.ok, again.error
    transferred = await d.fleet.wait_event(env_id, "deploy.transferred", n=2, timeout=120)
    await d.fleet.wait_event(env_id, "deploy.boot_verified", n=2, timeout=120)
    await d.release(env_id)
    return {"placement_s": allocated_at - started, "transfer_s": timings["transfer_s"],
            "start_s": timings["start_s"], "boot_s": timings["boot_s"], "total_s": total,
            "overhead_s": total - timings["transfer_s"] - timings["boot_s"],
            "redeploy_bytes": float(transferred[1]["bytes_sent"]),
            "first_bytes": float(transferred[0]["bytes_sent"]), **stages}


# the first deployment's events in the order the deployer emits them; each stage is the
# time between two of them, by the time the event was made (``occurred_at``), except the
# last: made → seen by a subscriber (the outbox relay and JetStream)
STAGES = (("env.allocated", "allocated_s"), ("deploy.started", "to_deploy_start_s"),
          ("deploy.transferred", "to_transferred_s"), ("deploy.vm_started", "to_vm_started_s"),
          ("deploy.boot_verified", "to_boot_verified_s"))


def _stages(events: list[tuple[str, dict[str, Any], float]], env_id: Any,
            started: float) -> dict[str, float]:
    from datetime import datetime

    first: dict[str, tuple[float, float]] = {}
    for subject, body, seen in events:
        if body.get("env_id") == str(env_id) and subject not in first:
            first[subject] = (datetime.fromisoformat(body["occurred_at"]).timestamp(), seen)
    out: dict[str, float] = {}
    previous = started
    for subject, key in STAGES:
        if subject in first:
            made, _ = first[subject]
            out[key] = made - previous
            previous = made
    if "deploy.boot_verified" in first:
        made, seen = first["deploy.boot_verified"]
        out["verdict_delivery_s"] = seen - made
    return out


async def bench(nats_url: str, db_url: str) -> dict[str, Any]:
    import nats

    from bench._stack import median
    from labfleet.deployer.main import create as create_deployer
    from labfleet.lab import lab as labmod
    from labfleet.lab.images import build_all
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState
    from labfleet.scheduler.main import create as create_scheduler
    from labfleet.shared.settings import Settings
    from labfleet.shared.ssh import SshPool
    from tests.integration.test_env_placement import FleetDouble, qemu_view
    from tests.lab.test_deploy_qemu import ENV_LAB_DIR, IMAGE_DIR, Deployments, lab_host, upload_build

    paths = LabPaths.from_env(ENV_LAB_DIR)
    was_up = LabState.load(paths.state_file) is not None
    say = lambda m: print(f"[lab] {m}", file=sys.stderr)  # noqa: E731
    images = build_all(paths, say, ["x86_64"])
    labmod.up(labmod.LabSpec(build_servers=0, qemu_hosts=2, boards=0), paths, say=say)
    lab = labmod.status(paths)
    settings = Settings(nats_url=nats_url, database_url=db_url, log_json=False,
                        log_level="WARNING", data_dir=Path(tempfile.mkdtemp(prefix="lf-bench-")))
    nc = await nats.connect(nats_url)
    scheduler = create_scheduler(settings)
    await scheduler.start()
    deployer = create_deployer(settings)
    await deployer.start()
    fleet = await FleetDouble(nc, private_key=Path(lab["hosts"][0]["key_path"]).read_text()).start()
    d = Deployments(lab, fleet, scheduler.db)
    pool = SshPool(connect_timeout=5)
    runs: list[dict[str, float]] = []
    try:
        for name in ("qemu1", "qemu2"):
            h = lab_host(lab, name)
            d.hosts[name] = await fleet.register(qemu_view(
                name, address=h["address"], port=h["ssh_port"], user=h["user"],
                host_key=h["host_key"], vcpus=2, memory_mb=1024, image_dir=IMAGE_DIR),
                scheduler.db)
        img = images["x86_64"].to_json()
        d.builds["x86_64"] = await upload_build(nc, fleet, __import__(
            "labfleet.shared.events.resource", fromlist=["Arch"]).Arch.X86_64,
            img["kernel"], img["initrd"])
        for r in range(RUNS + 1):
            result = await one_run(d, pool, lab)
            print(f"run {r}{' (warm-up)' if r == 0 else ''}: "
                  f"{json.dumps({k: round(v, 3) for k, v in result.items()})}", file=sys.stderr)
            if r > 0:
                runs.append(result)
    finally:
        await pool.close()
        await fleet.stop()
        await deployer.stop()
        await scheduler.stop()
        await nc.close()
        if not was_up:
            labmod.down(paths, say=say)
    keys = ("placement_s", "transfer_s", "start_s", "boot_s", "overhead_s", "total_s",
            "redeploy_bytes", "first_bytes")
    out: dict[str, Any] = {k: round(median([r[k] for r in runs]), 3) for k in keys}
    out["stages"] = {key: round(median([r[key] for r in runs if key in r]), 3)
                     for _, key in (*STAGES, ("", "verdict_delivery_s"))
                     if any(key in r for r in runs)}
    out["load_avg"] = round(os.getloadavg()[0], 2)
    out["redeploy_bytes"] = int(out["redeploy_bytes"])
    out["first_bytes"] = int(out["first_bytes"])
    out["runs"] = len(runs)
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench._stack import real_stack

    with real_stack() as (nats_url, db_url):
        result = asyncio.run(bench(nats_url, db_url))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
