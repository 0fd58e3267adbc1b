"""Bus throughput and latency through the outbox, on the real stack.

Each event goes: publisher → JetStream (stream BENCH) → a durable consumer of a real
labfleet ``Service`` → one PostgreSQL transaction (idempotency record + a row + the outbox
row) → the outbox relay → JetStream → a subscriber that timestamps it.  Latency is from
the moment the publisher sends to the moment the downstream event arrives.

Phases, alternated ``--rounds`` times (the machine is noisy; medians are quoted):
* ``paced``: events offered at ``--rate`` per second for ``--seconds`` (≥ 20 s sustained);
  reports the handled rate and p50/p99 latency at that load.
* ``baseline``: the same pacing through plain nats-py (publish → JetStream → consumer →
  publish → subscriber) with no database, so the cost of the outbox path is visible.

Last line of stdout: one JSON object with ``events_per_s``, ``p50_ms``, ``p99_ms`` (the
labfleet path, medians over rounds) and the ``baseline_*`` figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path

import nats
from faststream.nats import NatsMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import median, percentile, real_stack  # noqa: E402
from labfleet.shared.events.bench import BenchPing, BenchPong  # noqa: E402
from labfleet.shared.service import Service  # noqa: E402
from labfleet.shared.settings import Settings  # noqa: E402

MIGRATIONS = Path(__file__).parent / "fixtures"


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


async def collect_latencies(nc, subject: str, expected_getter, latencies: list[float], done: asyncio.Event) -> object:  # type: ignore[no-untyped-def]
    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        pong = json.loads(msg.data)
        latencies.append((time.perf_counter_ns() - pong["sent_ns"]) / 1e6)
        if len(latencies) >= expected_getter():
            done.set()

    return await nc.subscribe(subject, cb=cb)


async def labfleet_round(nats_url: str, db_url: str, rate: float, seconds: float) -> dict[str, float]:
    token = uuid.uuid4().hex[:8]
    settings = Settings(nats_url=nats_url, database_url=db_url, log_json=False,
                        consumer_concurrency=64)
    svc = Service.create(f"benchbus_{token}", settings, migrations=MIGRATIONS, db_pool_size=24)
    ping_subject, pong_subject = f"bench.ping{token}", f"bench.pong{token}"

    @svc.bus.on_event(BenchPing, purpose="ping", subject=ping_subject, batch_size=64,
                      max_workers=64)
    async def on_ping(event: BenchPing, msg: NatsMessage) -> None:
        assert svc.db is not None
        async with svc.db.consume("ping", event) as tx:
            if tx is None:
                return
            await tx.execute("INSERT INTO handled (event_id, seq) VALUES ($1, $2)",
                             event.event_id, event.seq)
            await tx.emit(BenchPong(seq=event.seq, sent_ns=event.sent_ns,
                                    ping_id=str(event.event_id)), subject=pong_subject)

    await svc.start()
    nc = await nats.connect(nats_url)
    latencies: list[float] = []
    done = asyncio.Event()
    sent = {"n": 10**12}
    sub = await collect_latencies(nc, pong_subject, lambda: sent["n"], latencies, done)
    t0 = time.perf_counter()
    sent["n"] = await offer(nc, ping_subject, rate, seconds, asyncio.Semaphore(4096))
    if len(latencies) >= sent["n"]:
        done.set()
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    await nc.close()
    await svc.stop()
    handled = len(latencies)
    return {
        "sent": sent["n"], "handled": handled, "events_per_s": handled / elapsed,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
    }


async def baseline_round(nats_url: str, rate: float, seconds: float) -> dict[str, float]:
    """Plain nats-py: JetStream consumer that republishes, no database, no framework."""
    token = uuid.uuid4().hex[:8]
    ping_subject, pong_subject = f"bench.ping{token}", f"bench.pong{token}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def handle(msg) -> None:  # type: ignore[no-untyped-def]
        ping = json.loads(msg.data)
        await js.publish(pong_subject, json.dumps({"sent_ns": ping["sent_ns"]}).encode(),
                         headers={"Nats-Msg-Id": "p" + ping["event_id"]})
        await msg.ack()

    psub = await js.subscribe(ping_subject, durable=f"bench-base-{token}", cb=handle,
                              manual_ack=True, pending_msgs_limit=100000)
    latencies: list[float] = []
    done = asyncio.Event()
    sent = {"n": 10**12}
    sub = await collect_latencies(nc, pong_subject, lambda: sent["n"], latencies, done)
    t0 = time.perf_counter()
    sent["n"] = await offer(nc, ping_subject, rate, seconds, asyncio.Semaphore(4096))
    if len(latencies) >= sent["n"]:
        done.set()
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    await psub.unsubscribe()
    await nc.close()
    handled = len(latencies)
    return {"events_per_s": handled / elapsed, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "handled": handled, "sent": sent["n"]}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0, help="events offered per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="sustained duration per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("faststream").setLevel(logging.WARNING)
    with real_stack() as (nats_url, db_url):
        ours: list[dict[str, float]] = []
        base: list[dict[str, float]] = []
        for r in range(args.rounds):
            ours.append(await labfleet_round(nats_url, db_url, args.rate, args.seconds))
            print(f"round {r + 1} labfleet: {json.dumps(ours[-1])}", file=sys.stderr)
            base.append(await baseline_round(nats_url, args.rate, args.seconds))
            print(f"round {r + 1} baseline: {json.dumps(base[-1])}", file=sys.stderr)
    result = {
        "events_per_s": round(median([o["events_per_s"] for o in ours]), 1),
        "p50_ms": round(median([o["p50_ms"] for o in ours]), 2),
        "p99_ms": round(median([o["p99_ms"] for o in ours]), 2),
        "offered_per_s": args.rate,
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
