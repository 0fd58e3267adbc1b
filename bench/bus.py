"""Bus throughput and latency through the outbox, on the real stack.

Each event goes: publisher → JetStream (stream BENCH) → a durable consumer of a real
labfleet ``Service`` in its own process → PostgreSQL (idempotency record + a row + the
outbox row, a fetched batch per transaction: ``batch_db``) → the outbox relay →
JetStream → a subscriber that timestamps it.  Latency is from
the moment the publisher sends to the moment the downstream event arrives.

Phases, alternated ``--rounds`` times (the machine is noisy; medians are quoted):
* ``paced``: events offered at ``--rate`` per second for ``--seconds`` (≥ 20 s sustained);
  reports the handled rate and p50/p99 latency at that load.
* ``baseline``: the same pacing through a plain nats-py consumer in its own process
  (fetch a batch → publish each → ack) with no framework and no database, so the cost of
  labfleet's path (faststream, validation, tracing, PostgreSQL, outbox) is visible.

Last line of stdout: one JSON object with ``events_per_s``, ``p50_ms``, ``p99_ms`` (the
labfleet path, medians over rounds) and the ``baseline_*`` figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import nats.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import median, percentile, real_stack  # noqa: E402
from labfleet.shared.bus import Delivery  # noqa: E402
from labfleet.shared.events.bench import BenchPing, BenchPong  # noqa: E402
from labfleet.shared.service import Service  # noqa: E402
from labfleet.shared.settings import Settings  # noqa: E402

MIGRATIONS = Path(__file__).parent / "fixtures"
BATCH_SIZE = 128


async def offer(nc, subject: str, rate: float, seconds: float, inflight: asyncio.Semaphore) -> int:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    pending: set[asyncio.Task[object]] = set()

    async def send(ev: BenchPing) -> None:
        try:
            await js.publish(subject, ev.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": str(ev.event_id)})
        finally:
            inflight.release()

    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        due = int((now - start) / interval) + 1
        while n < due:
            await inflight.acquire()
            ev = BenchPing(seq=n, sent_ns=time.perf_counter_ns())
            t = asyncio.create_task(send(ev))
            pending.add(t)
            t.add_done_callback(pending.discard)
            n += 1
        await asyncio.sleep(min(interval * 8, 0.002))
    await asyncio.gather(*pending)
    return n


async def collect_latencies(nc, subject: str, expected_getter, latencies: list[float], done: asyncio.Event,  # type: ignore[no-untyped-def]
                            to_handler: list[float]) -> object:
    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        pong = json.loads(msg.data)
        latencies.append((time.perf_counter_ns() - pong["sent_ns"]) / 1e6)
        if pong.get("handled_ns"):
            to_handler.append((pong["handled_ns"] - pong["sent_ns"]) / 1e6)
        if len(latencies) >= expected_getter():
            done.set()

    return await nc.subscribe(subject, cb=cb)


def spawn(role: str, token: str, nats_url: str, db_url: str) -> subprocess.Popen[bytes]:
    """The consumer runs in its own process, as it does when deployed."""
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--token", token,
         "--nats-url", nats_url, "--db-url", db_url, "--batch", str(BATCH_SIZE)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError(f"consumer did not start (exit {proc.poll()})")


async def serve_labfleet(token: str, nats_url: str, db_url: str) -> None:
    settings = Settings(nats_url=nats_url, database_url=db_url, log_json=False)
    svc = Service.create(f"benchbus_{token}", settings, migrations=MIGRATIONS, db_pool_size=8)

    @svc.bus.on_event(BenchPing, purpose="ping", subject=f"bench.ping{token}", batch_size=BATCH_SIZE,
                      batch_db=svc.db)
    async def on_ping(event: BenchPing, msg: Delivery) -> None:
        assert svc.db is not None
        async with svc.db.consume("ping", event) as tx:
            if tx is None:
                return
            await tx.defer("INSERT INTO handled (event_id, seq) VALUES ($1, $2)",
                           event.event_id, event.seq)
            await tx.emit(BenchPong(seq=event.seq, sent_ns=event.sent_ns,
                                    ping_id=str(event.event_id),
                                    handled_ns=time.perf_counter_ns()),
                          subject=f"bench.pong{token}")

    await svc.run(ready=lambda: print("ready", flush=True))


async def serve_baseline(token: str, nats_url: str) -> None:
    """Plain nats-py, no framework, no database: fetch a batch, republish, ack."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"bench.ping{token}", durable=f"bench-base-{token}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)

    async def one(msg) -> None:  # type: ignore[no-untyped-def]
        ping = json.loads(msg.data)
        await js.publish(f"bench.pong{token}",
                         json.dumps({"sent_ns": ping["sent_ns"]}).encode(),
                         headers={"Nats-Msg-Id": "p" + ping["event_id"]})
        await msg.ack()

    while not stop.is_set():
        try:
            msgs = await sub.fetch(128, timeout=0.5)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        await asyncio.gather(*(one(m) for m in msgs))
    await nc.close()


async def measure(role: str, nats_url: str, db_url: str, rate: float, seconds: float) -> dict[str, float]:
    token = uuid.uuid4().hex[:8]
    consumer = spawn(role, token, nats_url, db_url)
    try:
        await asyncio.to_thread(wait_ready, consumer)
        nc = await nats.connect(nats_url)
        latencies: list[float] = []
        to_handler: list[float] = []
        done = asyncio.Event()
        sent = {"n": 10**12}
        sub = await collect_latencies(nc, f"bench.pong{token}", lambda: sent["n"], latencies, done,
                                      to_handler)
        t0 = time.perf_counter()
        sent["n"] = await offer(nc, f"bench.ping{token}", rate, seconds, asyncio.Semaphore(4096))
        if len(latencies) >= sent["n"]:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - t0
        await sub.unsubscribe()
        await nc.close()
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
    handled = len(latencies)
    out = {"sent": sent["n"], "handled": handled, "events_per_s": handled / elapsed,
           "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}
    if to_handler:  # the labfleet path says when its handler began
        out["to_handler_p50_ms"] = percentile(to_handler, 50)
        out["to_handler_p99_ms"] = percentile(to_handler, 99)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0, help="events offered per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="sustained duration per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128,
                    help="the consumer's fetch batch (larger: more throughput, more latency)")
    ap.add_argument("--role", choices=["labfleet", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--nats-url", help=argparse.SUPPRESS)
    ap.add_argument("--db-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global BATCH_SIZE
    BATCH_SIZE = args.batch
    if args.role == "labfleet":
        logging.basicConfig(level=logging.WARNING)
        await serve_labfleet(args.token, args.nats_url, args.db_url)
        return
    if args.role == "baseline":
        await serve_baseline(args.token, args.nats_url)
        return
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("faststream").setLevel(logging.WARNING)
    with real_stack() as (nats_url, db_url):
        ours: list[dict[str, float]] = []
        base: list[dict[str, float]] = []
        for r in range(args.rounds):
            ours.append(await measure("labfleet", nats_url, db_url, args.rate, args.seconds))
            print(f"round {r + 1} labfleet: {json.dumps(ours[-1])}", file=sys.stderr)
            base.append(await measure("baseline", nats_url, db_url, args.rate, args.seconds))
            print(f"round {r + 1} baseline: {json.dumps(base[-1])}", file=sys.stderr)
    result = {
        "events_per_s": round(median([o["events_per_s"] for o in ours]), 1),
        "p50_ms": round(median([o["p50_ms"] for o in ours]), 2),
        "p99_ms": round(median([o["p99_ms"] for o in ours]), 2),
        "offered_per_s": args.rate,
        "batch": args.batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "lost": int(sum(o["sent"] - o["handled"] for o in ours)),
        "baseline_events_per_s": round(median([b["events_per_s"] for b in base]), 1),
        "baseline_p50_ms": round(median([b["p50_ms"] for b in base]), 2),
        "baseline_p99_ms": round(median([b["p99_ms"] for b in base]), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
