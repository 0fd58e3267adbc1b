"""Bus throughput and latency through the outbox, on the real stack.

Each event goes: publisher → JetStream (stream BENCH) → a durable consumer of a real
labfleet ``Service`` in its own process → PostgreSQL (idempotency record + a row + the
outbox row, a fetched batch per transaction: ``batch_db``) → the outbox relay (handed
the committed rows in memory) → JetStream → a subscriber that timestamps it.  Latency is
from the moment the publisher sends to the moment the downstream event arrives.

Phases, alternated ``--rounds`` times (the machine is noisy; medians are quoted):
* ``paced``: events offered at ``--rate`` per second for ``--warmup`` + ``--seconds``;
  the figures are those of the events sent in the ``--seconds`` window (≥ 20 s
  sustained): the handled rate (from the window's start until its last event was
  handled) and the latency percentiles.  The first events after a consumer starts wait on
  connections being opened and statements prepared (their p99 is ``warmup_p99_ms``);
  a service that has been running does not.
* ``baseline``: the same pacing through a plain nats-py consumer in its own process
  (fetch a batch → publish each → ack) with no framework and no database, so the cost of
  labfleet's path (faststream, validation, tracing, PostgreSQL, outbox) is visible.

Last line of stdout: one JSON object with ``events_per_s``, ``p50_ms``, ``p99_ms`` (the
labfleet path, medians over rounds), ``p999_ms``, ``max_ms``, ``to_handler_p99_ms`` (sent
→ the handler began: the consumer's queueing, apart from its database and outbox) and
the ``baseline_*`` figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import nats.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import median, percentile, real_stack  # noqa: E402
from labfleet.shared.bus import Delivery  # noqa: E402
from labfleet.shared.db.database import plain_dsn  # noqa: E402
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


async def collect(nc, subject: str, expected_getter, arrivals: list[tuple[int, int, int]],  # type: ignore[no-untyped-def]
                  done: asyncio.Event) -> object:
    """Record (sent, arrived, handler began) in ``perf_counter_ns`` for each pong."""
    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter_ns()
        pong = json.loads(msg.data)
        arrivals.append((pong["sent_ns"], now, pong.get("handled_ns", 0)))
        if len(arrivals) >= expected_getter():
            done.set()

    return await nc.subscribe(subject, cb=cb)


def summarise(arrivals: list[tuple[int, int, int]], sent: int,
              window_start_ns: int) -> dict[str, float]:
    """Figures for the events sent in the measured window (after the warm-up)."""
    measured = [a for a in arrivals if a[0] >= window_start_ns]
    latencies = [(arrived - sent_ns) / 1e6 for sent_ns, arrived, _ in measured]
    to_handler = [(began - sent_ns) / 1e6 for sent_ns, _, began in measured if began]
    last = max((arrived for _, arrived, _ in measured), default=window_start_ns + 1)
    out = {"sent": sent, "handled": len(arrivals), "measured": len(measured),
           # from the window's start until its last event was handled
           "events_per_s": len(measured) / ((last - window_start_ns) / 1e9),
           "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
           "p999_ms": percentile(latencies, 99.9), "max_ms": max(latencies, default=float("nan"))}
    warm = [(arrived - sent_ns) / 1e6 for sent_ns, arrived, _ in arrivals
            if sent_ns < window_start_ns]
    if warm:
        out["warmup_p99_ms"] = percentile(warm, 99)
    if to_handler:  # the labfleet path says when its handler began
        out["to_handler_p50_ms"] = percentile(to_handler, 50)
        out["to_handler_p99_ms"] = percentile(to_handler, 99)
    return out


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


async def measure(role: str, nats_url: str, db_url: str, rate: float, seconds: float,
                  warmup: float) -> dict[str, float]:
    token = uuid.uuid4().hex[:8]
    consumer = spawn(role, token, nats_url, db_url)
    try:
        await asyncio.to_thread(wait_ready, consumer)
        nc = await nats.connect(nats_url)
        arrivals: list[tuple[int, int, int]] = []
        done = asyncio.Event()
        sent = {"n": 10**12}
        sub = await collect(nc, f"bench.pong{token}", lambda: sent["n"], arrivals, done)
        window_start_ns = time.perf_counter_ns() + int(warmup * 1e9)
        sent["n"] = await offer(nc, f"bench.ping{token}", rate, warmup + seconds,
                                asyncio.Semaphore(4096))
        if len(arrivals) >= sent["n"]:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        except TimeoutError:
            pass
        await sub.unsubscribe()
        await nc.close()
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
        if role == "labfleet":  # the next round starts on an empty database, as this one did
            conn = await asyncpg.connect(plain_dsn(db_url))
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "benchbus_{token}" CASCADE')
            finally:
                await conn.close()
    return summarise(arrivals, sent["n"], window_start_ns)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2100.0,
                    help="events offered per second (above the 2,000/s target: a path that "
                         "only just keeps up at 2,000 offered measures a hair under it)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="sustained duration per round, measured after the warm-up")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of load before the measured window (its p99 is reported "
                         "apart as warmup_p99_ms)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128,
                    help="the consumer's fetch batch (larger: more throughput, more latency)")
    ap.add_argument("--nats-sync-always", action="store_true",
                    help="without LABFLEET_NATS_URL: start the embedded NATS as `labfleet up` "
                         "does, every JetStream write synced (then the disk sets the rate "
                         "for both paths)")
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
    if os.environ.get("LABFLEET_NATS_URL"):
        nats_used = "LABFLEET_NATS_URL"
    else:
        nats_used = "embedded, " + ("every write synced" if args.nats_sync_always
                                    else "NATS's default sync")
    print(f"NATS: {nats_used}", file=sys.stderr)
    with real_stack(nats_sync_always=args.nats_sync_always) as (nats_url, db_url):
        ours: list[dict[str, float]] = []
        base: list[dict[str, float]] = []
        for r in range(args.rounds):
            ours.append(await measure("labfleet", nats_url, db_url, args.rate, args.seconds,
                                      args.warmup))
            print(f"round {r + 1} labfleet: {json.dumps(ours[-1])}", file=sys.stderr)
            base.append(await measure("baseline", nats_url, db_url, args.rate, args.seconds,
                                      args.warmup))
            print(f"round {r + 1} baseline: {json.dumps(base[-1])}", file=sys.stderr)
    result = {
        "events_per_s": round(median([o["events_per_s"] for o in ours]), 1),
        "p50_ms": round(median([o["p50_ms"] for o in ours]), 2),
        "p99_ms": round(median([o["p99_ms"] for o in ours]), 2),
        "p999_ms": round(median([o["p999_ms"] for o in ours]), 2),
        "max_ms": round(max(o["max_ms"] for o in ours), 2),
        "warmup_p99_ms": round(median([o.get("warmup_p99_ms", float("nan")) for o in ours]), 2),
        "to_handler_p99_ms": round(median([o["to_handler_p99_ms"] for o in ours]), 2),
        "offered_per_s": args.rate,
        "nats": nats_used,
        "warmup_s": args.warmup,
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
