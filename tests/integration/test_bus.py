"""The bus against real NATS JetStream and PostgreSQL: outbox, idempotency, redelivery,
dead letters."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsMessage

from labfleet.shared.bus import BATCH_TRANSACTIONS
from labfleet.shared.events.bench import BenchPing, BenchPong
from labfleet.shared.events.system import DeadLettered
from labfleet.shared.service import Service

MIGRATIONS = Path(__file__).parent / "fixtures" / "bustest_migrations"

pytestmark = pytest.mark.integration


class Harness:
    def __init__(self, service: Service, ping_subject: str, pong_subject: str) -> None:
        self.service = service
        self.ping_subject = ping_subject
        self.pong_subject = pong_subject
        self.deliveries: dict[str, int] = {}


async def start_harness(settings, unique: str, *, batch: bool = False) -> Harness:  # type: ignore[no-untyped-def]
    svc = Service.create(f"bt_{unique}", settings, migrations=MIGRATIONS)
    h = Harness(svc, f"bench.ping{unique}", f"bench.pong{unique}")

    @svc.bus.on_event(BenchPing, purpose="ping", subject=h.ping_subject,
                      batch_db=svc.db if batch else None)
    async def on_ping(event: BenchPing, msg: NatsMessage) -> None:
        key = str(event.event_id)
        h.deliveries[key] = h.deliveries.get(key, 0) + 1
        if h.deliveries[key] <= event.fail_deliveries:
            raise RuntimeError(f"induced failure {h.deliveries[key]}")
        assert svc.db is not None
        async with svc.db.consume("ping", event) as tx:
            if tx is None:
                return
            # n records the transaction, to tell a batch unit of work from single ones
            await tx.execute("INSERT INTO handled (event_id, n) "
                             "VALUES ($1, (txid_current() % 2000000000)::int)", event.event_id)
            await tx.emit(BenchPong(seq=event.seq, ping_id=key), subject=h.pong_subject)

    await svc.start()
    return h


async def collect(nc, subject: str, n: int, timeout: float = 30.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True)
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                msg = await sub.next_msg(timeout=timeout)
                out.append(msg.data)
    except TimeoutError:
        pass
    await sub.unsubscribe()
    return out


async def publish(nc, subject: str, event: BenchPing, msg_id: str | None = None) -> None:  # type: ignore[no-untyped-def]
    await nc.jetstream().publish(subject, event.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": msg_id or str(event.event_id)})


async def test_outbox_publishes_once_and_redelivery_has_no_second_effect(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    h = await start_harness(settings_factory(), unique)
    nc = await nats.connect(nats_url)
    try:
        ping = BenchPing(seq=1)
        await publish(nc, h.ping_subject, ping)
        await publish(nc, h.ping_subject, ping)  # same Nats-Msg-Id: JetStream drops it
        await publish(nc, h.ping_subject, ping, msg_id="forced-redelivery")  # same event id
        pongs = await collect(nc, h.pong_subject, 2, timeout=5.0)
        assert len(pongs) == 1, pongs
        assert BenchPong.model_validate_json(pongs[0]).ping_id == str(ping.event_id)
        assert h.deliveries[str(ping.event_id)] == 2  # stored twice, handled (effect) once
        assert h.service.db is not None
        assert await h.service.db.fetchval("SELECT count(*) FROM handled") == 1
        assert await outbox_rows(h.service, 0) == 0
    finally:
        await nc.close()
        await h.service.stop()


async def test_failing_handler_is_redelivered_then_succeeds(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    h = await start_harness(settings_factory(max_deliver=3), unique)
    nc = await nats.connect(nats_url)
    try:
        ping = BenchPing(seq=2, fail_deliveries=2)
        await publish(nc, h.ping_subject, ping)
        pongs = await collect(nc, h.pong_subject, 1)
        assert len(pongs) == 1
        assert h.deliveries[str(ping.event_id)] == 3
    finally:
        await nc.close()
        await h.service.stop()


async def test_poison_message_lands_on_dead_letter_with_error(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    h = await start_harness(settings_factory(max_deliver=3), unique)
    nc = await nats.connect(nats_url)
    try:
        ping = BenchPing(seq=3, fail_deliveries=99)
        await publish(nc, h.ping_subject, ping)
        dl_subject = f"deadletter.BENCH.bt_{unique}-ping"
        letters = await collect(nc, dl_subject, 1)
        assert len(letters) == 1
        dead = DeadLettered.model_validate_json(letters[0])
        assert dead.deliveries == 3
        assert dead.error_type == "RuntimeError"
        assert "induced failure 3" in dead.error
        assert json.loads(dead.payload)["event_id"] == str(ping.event_id)
        assert dead.original_subject == h.ping_subject
        # an invalid payload is dead-lettered at once: retrying cannot make it valid
        await nc.jetstream().publish(h.ping_subject, b'{"seq": "not a number"}')
        letters = await collect(nc, dl_subject, 2)
        assert len(letters) == 2
        bad = DeadLettered.model_validate_json(letters[1])
        # dead-lettered without retries (a second delivery only if the first copy's
        # publish to the dead-letter stream itself failed)
        assert bad.error_type == "ValidationError"
        assert "seq" in bad.error
        assert len(h.deliveries) == 1  # the handler never saw the invalid message
    finally:
        await nc.close()
        await h.service.stop()


async def test_batch_unit_of_work_commits_together_and_falls_back_on_failure(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    h = await start_harness(settings_factory(max_deliver=3), unique, batch=True)
    await h.service.stop()  # publish while stopped, so that one fetch returns the batch
    try:
        # 1. a batch that succeeds: one transaction for all of it
        first = [BenchPing(seq=i) for i in range(20)]
        for ev in first:
            await publish(nc, h.ping_subject, ev)
        h = await start_harness(settings_factory(max_deliver=3), unique, batch=True)
        pongs = await collect(nc, h.pong_subject, 20)
        assert sorted(BenchPong.model_validate_json(p).seq for p in pongs) == list(range(20))
        db = h.service.db
        assert db is not None
        # a handful of batch transactions, not one per event
        assert await db.fetchval("SELECT count(DISTINCT n) FROM handled") <= BATCH_TRANSACTIONS
        await h.service.stop()

        # 2. a batch with one failing handler: rolled back, then message by message
        second = [BenchPing(seq=100 + i) for i in range(10)]
        flaky = BenchPing(seq=999, fail_deliveries=1)
        for ev in [*second[:5], flaky, *second[5:]]:
            await publish(nc, h.ping_subject, ev)
        h = await start_harness(settings_factory(max_deliver=3), unique, batch=True)
        pongs = await collect(nc, h.pong_subject, 31)
        seqs = sorted(BenchPong.model_validate_json(p).seq for p in pongs)
        assert seqs == [*range(20), *range(100, 110), 999]  # each exactly once
        db = h.service.db
        assert db is not None
        assert await db.fetchval("SELECT count(*) FROM handled") == 31
        assert await db.fetchval("SELECT count(*) FROM processed_events") == 31
        # the failing event's batch was rolled back; it was then handled on its own
        assert await db.fetchval(
            "SELECT count(*) FROM handled WHERE n = (SELECT n FROM handled WHERE event_id = $1)",
            flaky.event_id) == 1
        # called twice: in the batch (raised, rolled back), then alone (succeeded)
        assert h.deliveries[str(flaky.event_id)] == 2
        assert await outbox_rows(h.service, 0) == 0
        await h.service.stop()
    finally:
        await nc.close()


async def test_batch_claims_once_defers_writes_and_reads_them_back(settings_factory, unique):  # type: ignore[no-untyped-def]
    """In a batch unit of work the idempotency records are claimed for the whole batch,
    deferred writes wait for the end (or for the next statement, which must see them), and
    an event handled before, or twice in one batch, has no second effect."""
    h = await start_harness(settings_factory(), unique)
    db = h.service.db
    assert db is not None
    insert = "INSERT INTO handled (event_id, n) VALUES ($1, $2)"
    old, a, b, stranger = (BenchPing(seq=i) for i in range(4))
    try:
        async with db.consume("ping", old) as tx:  # handled in an earlier transaction
            assert tx is not None
            await tx.execute(insert, old.event_id, 0)
        async with db.batch([old.event_id, a.event_id, b.event_id]) as unit:
            for n, ev in enumerate((old, a, b), start=1):
                async with db.consume("ping", ev) as tx:
                    if tx is not None:
                        await tx.defer(insert, ev.event_id, n)
            assert set(unit.writes) == {insert} and len(unit.writes[insert]) == 2
            # nothing sent yet: the connection itself sees only the earlier row
            assert await unit.conn.fetchval("SELECT count(*) FROM handled") == 1
            async with db.consume("ping", a) as tx:  # a second delivery of a in the batch
                assert tx is None
            async with db.consume("ping", stranger) as tx:  # not listed: claimed alone
                assert tx is not None
                # a read through the transaction runs the deferred writes first
                assert await tx.fetchval("SELECT count(*) FROM handled") == 3
                await tx.defer(insert, stranger.event_id, 4)
            assert unit.writes[insert] == [(stranger.event_id, 4)]
        rows = await db.fetch("SELECT event_id, n FROM handled ORDER BY n")
        assert [(r["event_id"], r["n"]) for r in rows] == [
            (old.event_id, 0), (a.event_id, 2), (b.event_id, 3), (stranger.event_id, 4)]
        assert await db.fetchval("SELECT count(*) FROM processed_events") == 4

        # a batch that fails leaves no claim and no write behind
        late = BenchPing(seq=5)
        with pytest.raises(RuntimeError, match="induced"):
            async with db.batch([late.event_id]):
                async with db.consume("ping", late) as tx:
                    assert tx is not None
                    await tx.defer(insert, late.event_id, 5)
                raise RuntimeError("induced")
        async with db.consume("ping", late) as tx:
            assert tx is not None  # not claimed: the rolled-back batch left nothing
            await tx.defer(insert, late.event_id, 5)  # alone: written at once
            assert await tx.fetchval("SELECT n FROM handled WHERE event_id = $1",
                                     late.event_id) == 5
    finally:
        await h.service.stop()


class SlowPublishes:
    """The real JetStream context, each publish held back a while (a busy server)."""

    def __init__(self, js, delay: float) -> None:  # type: ignore[no-untyped-def]
        self.js, self.delay = js, delay

    async def publish_async(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await self.js.publish_async(*args, **kwargs)


class FlakyPublishes(SlowPublishes):
    """The real JetStream context whose first ``fail`` publishes fail (NATS away)."""

    def __init__(self, js, fail: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(js, 0.0)
        self.fail = fail

    async def publish_async(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("induced: the server is away")
        return await super().publish_async(*args, **kwargs)


async def replace_relay(svc: Service, js, **kwargs):  # type: ignore[no-untyped-def]
    from labfleet.shared.db import OutboxRelay

    assert svc.db is not None and svc.relay is not None
    await svc.relay.stop()
    svc.relay = OutboxRelay(svc.db, js, **kwargs)
    await svc.relay.start()
    return svc.relay


async def outbox_rows(svc: Service, want: int, timeout: float = 10.0) -> int:
    """The outbox's row count once it is ``want`` (deletes follow acks), or at the deadline."""
    assert svc.db is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        n = int(await svc.db.fetchval("SELECT count(*) FROM outbox"))
        if n == want or asyncio.get_running_loop().time() > deadline:
            return n
        await asyncio.sleep(0.05)


async def test_committed_rows_go_out_at_once_in_commit_order_without_a_poll(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    h = await start_harness(settings_factory(), unique)
    db, svc = h.service.db, h.service
    assert db is not None
    relay = await replace_relay(svc, SlowPublishes(svc.bus.js, 0.5), poll_s=60, grace_s=60)
    nc = await nats.connect(nats_url)
    try:
        got = asyncio.create_task(collect(nc, h.pong_subject, 3, timeout=20))
        await asyncio.sleep(0.3)  # the ordered consumer is listening
        async with db.transaction() as tx:
            await tx.emit(BenchPong(seq=1, ping_id="a"), subject=h.pong_subject)
        await asyncio.sleep(0.2)  # the relay is publishing the first, held back
        async with db.transaction() as tx:
            await tx.emit(BenchPong(seq=2, ping_id="b"), subject=h.pong_subject)
            await tx.emit(BenchPong(seq=3, ping_id="c"), subject=h.pong_subject)
        with pytest.raises(RuntimeError, match="induced rollback"):
            async with db.transaction() as tx:  # rolled back: never handed over
                await tx.emit(BenchPong(seq=99, ping_id="z"), subject=h.pong_subject)
                raise RuntimeError("induced rollback")
        started = asyncio.get_running_loop().time()
        pongs = await got
        took = asyncio.get_running_loop().time() - started
        assert [BenchPong.model_validate_json(p).seq for p in pongs] == [1, 2, 3]
        assert took < 10, f"the rows waited {took:.1f} s (the sweep polls every 60 s)"
        assert relay.swept == 0 and relay.published == 3
        assert await outbox_rows(svc, 0) == 0  # acknowledged rows are deleted
    finally:
        await nc.close()
        await svc.stop()


async def test_rows_a_publish_or_a_crash_left_behind_are_swept(settings_factory, unique, nats_url):  # type: ignore[no-untyped-def]
    h = await start_harness(settings_factory(), unique)
    db, svc = h.service.db, h.service
    assert db is not None and svc.relay is not None
    nc = await nats.connect(nats_url)
    try:
        got = asyncio.create_task(collect(nc, h.pong_subject, 2, timeout=20))
        await asyncio.sleep(0.3)
        # a crash between commit and publish: the row is committed, no relay took it
        await svc.relay.stop()
        async with db.transaction() as tx:
            await tx.emit(BenchPong(seq=1, ping_id="crash"), subject=h.pong_subject)
        assert await outbox_rows(svc, 1, timeout=0) == 1
        # the next publish fails (NATS away): its row stays too
        relay = await replace_relay(svc, FlakyPublishes(svc.bus.js, fail=1), poll_s=0.2,
                                    grace_s=1.0)
        async with db.transaction() as tx:
            await tx.emit(BenchPong(seq=2, ping_id="failed"), subject=h.pong_subject)
        pongs = await got
        assert sorted(BenchPong.model_validate_json(p).seq for p in pongs) == [1, 2]
        assert await outbox_rows(svc, 0) == 0
        assert relay.swept == 2, "both rows came from the sweep, after its grace"
    finally:
        await nc.close()
        await svc.stop()


async def test_an_outbox_made_with_the_notify_trigger_loses_it_on_upgrade(database_url, unique):  # type: ignore[no-untyped-def]
    import asyncpg

    from labfleet.shared.db import migrate
    from labfleet.shared.db.database import plain_dsn

    versions = Path(__file__).resolve().parents[2] / "services" / "monitor" / "migrations"
    schema = f"mon_{unique}"
    await migrate(database_url, schema, versions, revision="0001")
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        # as revision 0001 made it before the relay was handed rows in memory
        await conn.execute(f"""
            CREATE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', ''); RETURN NULL; END $$""")
        await conn.execute(f"CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox "
                           f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify()")
        triggers = ("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = $1 AND t.tgname = 'outbox_notify'")
        assert await conn.fetchval(triggers, schema) == 1
        await migrate(database_url, schema, versions)
        assert await conn.fetchval(triggers, schema) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname = 'outbox_notify'", schema) == 0
        head = max(f.name[:4] for f in versions.glob("0*.py"))
        assert await conn.fetchval(f"SELECT version_num FROM {schema}.alembic_version") == head
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_a_reply_too_large_for_nats_comes_back_as_an_error_not_a_timeout(settings_factory, unique):  # type: ignore[no-untyped-def]
    from labfleet.shared.events.resource import ListResources, ResourceListReply

    svc = Service.create(f"bt_{unique}", settings_factory(), migrations=MIGRATIONS)
    subject = f"resource.cmd.list{unique}"
    sizes: dict[str, int] = {}

    @svc.bus.on_command(ListResources, subject=subject)
    async def answer(msg: NatsMessage) -> str:
        # the handler's own parameters still reach it through the size check
        wanted = json.loads(msg.body)["kind"]
        if wanted == "build_server":
            return ResourceListReply(ok=True).model_dump_json()
        sizes["max_payload"] = svc.bus.nc.max_payload
        return json.dumps({"ok": True, "resources": [], "pad": "x" * svc.bus.nc.max_payload})

    await svc.start()
    try:
        small = await svc.bus.request(ListResources(kind="build_server"), ResourceListReply,
                                      subject=subject, timeout=10)
        assert small.ok and small.resources == []
        started = asyncio.get_running_loop().time()
        big = await svc.bus.request(ListResources(), ResourceListReply, subject=subject,
                                    timeout=10)
        assert asyncio.get_running_loop().time() - started < 5  # an answer, not a timeout
    finally:
        await svc.stop()
    assert not big.ok and big.error is not None
    assert big.error.code == "reply_too_large"
    assert f"max_payload of {sizes['max_payload']} bytes" in big.error.message
    assert subject in big.error.message and "max_payload" in (big.error.hint or "")
    assert big.error.details["size"] > sizes["max_payload"]


async def test_every_command_gets_an_answer_even_a_bad_one_or_a_failing_one(settings_factory, unique):  # type: ignore[no-untyped-def]
    from labfleet.shared.events.build import BuildReply, GetBuild
    from labfleet.shared.events.resource import ListResources, ResourceListReply, ResourceView

    svc = Service.create(f"bt_{unique}", settings_factory(), migrations=MIGRATIONS)
    get_subject, list_subject = f"build.cmd.get{unique}", f"resource.cmd.list{unique}"
    ran: list[str] = []

    @svc.bus.on_command(GetBuild, subject=get_subject)
    async def get(cmd: GetBuild) -> BuildReply:
        ran.append(str(cmd.build_id))
        raise RuntimeError("induced handler failure")

    @svc.bus.on_command(ListResources, subject=list_subject)
    async def listing(cmd: ListResources) -> ResourceListReply:
        view = ResourceView.model_validate_json(json.dumps({
            "resource_id": "00000000-0000-0000-0000-000000000001", "kind": "build_server",
            "name": "x" * 200, "ssh": {"address": "10.0.0.1", "port": 22, "username": "lab"}}))
        # a model, too large for the server once it holds enough of them
        return ResourceListReply(ok=True, resources=[view] * (svc.bus.nc.max_payload // 200))

    await svc.start()
    try:
        nc = svc.bus.nc
        started = asyncio.get_running_loop().time()
        missing = json.loads((await nc.request(get_subject, b'{"bogus": 1}', timeout=5)).data)
        garbage = json.loads((await nc.request(get_subject, b"not json", timeout=5)).data)
        failed = await svc.bus.request(
            GetBuild(build_id="00000000-0000-0000-0000-000000000002"), BuildReply,
            subject=get_subject, timeout=5)
        big = await svc.bus.request(ListResources(), ResourceListReply, subject=list_subject,
                                    timeout=10)
        # answers, each at once: not requests left to time out
        assert asyncio.get_running_loop().time() - started < 8
    finally:
        await svc.stop()
    assert missing["ok"] is False and missing["error"]["code"] == "invalid_request"
    assert missing["error"]["field"] == "build_id"
    assert missing["error"]["message"] == "build_id: Field required"
    assert garbage["error"]["code"] == "invalid_request"
    assert "GetBuild" in garbage["error"]["message"]
    # the bad ones never reached the handler; the good one did, and its failure is said
    assert ran == ["00000000-0000-0000-0000-000000000002"]
    assert not failed.ok and failed.error is not None and failed.error.code == "internal_error"
    assert get_subject in failed.error.message and "log" in (failed.error.hint or "")
    assert not big.ok and big.error is not None and big.error.code == "reply_too_large"
