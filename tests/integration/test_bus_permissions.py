"""The bus is locked: who may connect, and each identity only on its own subjects.

Against the embedded nats-server the suite runs on (started by tests/conftest.py with
every identity of shared/natsauth): each refusal is the server's own, seen by the client
as a permissions violation, and the command it refused never reaches its handler.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import nats
import pytest
from nats.js.api import DeliverPolicy

from labfleet.shared.bus import STREAMS
from labfleet.shared.natsauth.identities import IdentityStore, strip_userinfo
from labfleet.shared.natsauth.permissions import (
    LABFLEET_STREAMS,
    PUBLIC_STREAMS,
    SERVICES,
    external_grant,
    grants,
    inbox_prefix,
)
from labfleet.shared.settings import Settings

pytestmark = pytest.mark.integration


class Refusals:
    """The errors the server sends a connection, as the client's error callback sees them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def wait_for(self, fragment: str, timeout: float = 5.0) -> str:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for error in self.errors:
                        if fragment.lower() in error.lower():
                            return error
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"no refusal naming {fragment!r}; got {self.errors}") from None


@pytest.fixture
def server(nats_server):  # type: ignore[no-untyped-def]
    if nats_server is None:
        pytest.skip("LABFLEET_NATS_URL names a server of its own: its permissions are its "
                    "administrator's, not the ones this test checks")
    return nats_server


async def connect_as(server, name: str, refusals: Refusals, *, seed: Path | None = None):  # type: ignore[no-untyped-def]
    seed = seed or server.identity_dir / f"{name}.nk"
    return await nats.connect(strip_userinfo(server.url), nkeys_seed=str(seed),
                              inbox_prefix=inbox_prefix(name), error_cb=refusals.on_error,
                              allow_reconnect=False, name=f"labfleet-{name}")


def matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


async def test_a_client_without_credentials_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(strip_userinfo(server.url), allow_reconnect=False,
                           max_reconnect_attempts=1, connect_timeout=2)
    wrong = IdentityStore(server.identity_dir.parent / "stranger")
    wrong.dir.mkdir(exist_ok=True)
    from labfleet.shared.natsauth.identities import new_seed

    (wrong.dir / "x.nk").write_text(new_seed())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(strip_userinfo(server.url), nkeys_seed=str(wrong.dir / "x.nk"),
                           allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2)


async def test_only_the_services_that_log_in_to_hosts_may_ask_for_credentials(server, nc) -> None:  # type: ignore[no-untyped-def]
    """The gateway sends commands on behalf of people, but never this one; a builder may."""
    asked: list[bytes] = []

    async def inventory_stand_in(msg) -> None:  # type: ignore[no-untyped-def]
        asked.append(msg.data)
        await msg.respond(b'{"ok": true}')

    # the operator (tests' connection) answers in inventory's place, on a test subject
    # copy of the rule: the server's grant, not the handler, must refuse
    sub = await nc.subscribe("resource.cmd.credentials", cb=inventory_stand_in)
    await nc.flush()
    refusals = Refusals()
    gateway = await connect_as(server, "gateway", refusals)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await gateway.request("resource.cmd.credentials", b'{"resource_id": "x"}',
                                  timeout=1.0)
        error = await refusals.wait_for("resource.cmd.credentials")
        assert "permissions violation for publish" in error.lower()
        assert asked == []  # it never left the server
        # the gateway may send an ordinary command (it reaches whoever answers)
        builder = await connect_as(server, "builder", Refusals())
        try:
            reply = await builder.request("resource.cmd.credentials", b'{"resource_id": "y"}',
                                          timeout=5.0)
            assert reply.data == b'{"ok": true}' and asked == [b'{"resource_id": "y"}']
        finally:
            await builder.close()
    finally:
        await gateway.close()
        await sub.unsubscribe()


async def test_no_service_can_overhear_registrations_or_other_identities_replies(server) -> None:  # type: ignore[no-untyped-def]
    refusals = Refusals()
    gateway = await connect_as(server, "gateway", refusals)
    try:
        # registrations carry SSH passwords and keys: only inventory subscribes to them
        await gateway.subscribe("resource.cmd.register_build_server")
        await refusals.wait_for('Subscription to "resource.cmd.register_build_server"')
        # a credentials reply goes to the builder's private inbox
        await gateway.subscribe(f"{inbox_prefix('builder')}.>")
        await refusals.wait_for(f'Subscription to "{inbox_prefix("builder")}.>"')
        await gateway.subscribe(">")
        await refusals.wait_for('Subscription to ">"')
    finally:
        await gateway.close()


async def test_external_tooling_submits_jobs_and_reads_public_events_only(server, nc, unique) -> None:  # type: ignore[no-untyped-def]
    from labfleet.shared.bus import ensure_streams

    await ensure_streams(nc.jetstream())  # as any service does at its start
    path = server.identities.add_external(f"ci-{unique}")
    server.reload()
    refusals = Refusals()
    tool = None
    for _ in range(50):  # the server re-reads its configuration on SIGHUP
        try:
            tool = await nats.connect(strip_userinfo(server.url), nkeys_seed=str(path),
                                      error_cb=refusals.on_error, allow_reconnect=False,
                                      max_reconnect_attempts=1, connect_timeout=2)
            break
        except nats.errors.Error:
            await asyncio.sleep(0.1)
    assert tool is not None, "the new external identity was never admitted"
    kept = server.identity_dir.parent / f"withdrawn-{unique}.nk"  # the tool keeps its copy
    kept.write_text(path.read_text())
    try:
        js = tool.jetstream()
        ack = await js.publish("job.submitted", b'{"job": "' + unique.encode() + b'"}',
                               headers={"Nats-Msg-Id": f"ci-{unique}"})
        assert ack.stream == "JOB"
        # reads a public stream from the start
        sub = await js.subscribe("resource.*", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.NEW)
        await sub.unsubscribe()
        # but no command: removing a server, cancelling a build
        await tool.publish("resource.cmd.remove", b"{}")
        await refusals.wait_for('Publish to "resource.cmd.remove"')
        await tool.publish("build.cmd.cancel", b"{}")
        await refusals.wait_for('Publish to "build.cmd.cancel"')
        # no event in a service's name, no log, no dead letter
        await tool.publish("build.succeeded", b"{}")
        await refusals.wait_for('Publish to "build.succeeded"')
        with pytest.raises(Exception):  # noqa: B017 - the JetStream API refuses (timeout)
            await js.subscribe("log.>", ordered_consumer=True)
        await refusals.wait_for("$JS.API.CONSUMER.CREATE.LOGS")
    finally:
        await tool.close()
        server.identities.remove_external(f"ci-{unique}")
        server.reload()
    # withdrawn: the tool's next login with the seed it still has is refused
    await asyncio.sleep(0.3)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(strip_userinfo(server.url), nkeys_seed=str(kept),
                           allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2)


def test_the_policy_names_every_stream_and_nothing_more() -> None:
    assert set(LABFLEET_STREAMS) == {s.name for s in STREAMS}
    assert set(PUBLIC_STREAMS) <= set(LABFLEET_STREAMS)
    assert not {"LOGS", "SAMPLES", "DEADLETTER"} & set(PUBLIC_STREAMS)
    external = external_grant()
    assert not any(matches(p, "resource.cmd.credentials") for p in external.publish)
    assert external.subscribe == ("_INBOX.>",)


@pytest.mark.parametrize("name", [n for n in SERVICES if n != "pipeline"])
def test_each_services_grant_covers_what_it_subscribes_and_nothing_secret(name: str) -> None:
    """The subjects a service's handlers are registered on are in its grant, so a service
    started with its identity is never refused its own work (and the table cannot drift
    from the code)."""
    from labfleet.cli.registry import load_service

    settings = Settings(nats_url="nats://127.0.0.1:9", database_url="postgresql://x@127.0.0.1/x",
                        credential_key="A" * 43 + "=", session_secret="s" * 40)
    entry = load_service(name)
    assert entry.factory is not None, entry.problem
    service = entry.factory(settings)
    grant = grants()[name]
    stream_of = {re.sub(r"\..*", "", s.subjects[0]): s.name for s in STREAMS}
    for router, kind in ((service.bus.events, "event"), (service.bus.commands, "command")):
        for sub in router.subscribers:
            subject = sub._resolved_subject_string  # noqa: SLF001 - the subject as subscribed
            if kind == "command":
                assert any(matches(p, subject) for p in grant.subscribe), (name, subject)
            else:
                stream = stream_of[subject.split(".", 1)[0]]
                assert f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*" in grant.publish, (name, subject)
    holders = [n for n, g in grants().items()
               if any(matches(p, "resource.cmd.register_build_server") for p in g.subscribe)]
    assert holders == ["inventory"]
    askers = {n for n, g in grants().items()
              if any(matches(p, "resource.cmd.credentials") for p in g.publish)
              and "resource.cmd.credentials" not in g.deny_publish}
    assert askers == {"monitor", "builder", "deployer"}


async def test_the_cli_issues_an_external_identity_that_works_at_once(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from labfleet.cli.datadir import RunFiles
    from labfleet.cli.main import build_app
    from labfleet.embedded import start_nats

    data = tmp_path / "data"
    server = start_nats(data / "nats")
    RunFiles(data).write_pid("nats-server", server.process.pid)
    try:
        runner = CliRunner()
        bad = runner.invoke(build_app(), ["nats", "add-external", "CI Bot", "--data-dir", str(data)])
        assert bad.exit_code == 1 and "lower-case letters" in bad.output
        added = runner.invoke(build_app(), ["nats", "add-external", "ci-bot", "--data-dir", str(data)])
        assert added.exit_code == 0, added.output
        seed = data / "nats" / "identities" / "external" / "ci-bot.nk"
        assert seed.stat().st_mode & 0o777 == 0o600
        assert seed.read_text().strip() not in added.output  # the path is shown, not the key
        assert "re-read its configuration" in added.output
        again = runner.invoke(build_app(), ["nats", "add-external", "ci-bot", "--data-dir", str(data)])
        assert again.exit_code == 1 and "exists already" in again.output
        listed = runner.invoke(build_app(), ["nats", "identities", "--data-dir", str(data)])
        assert "external  ci-bot" in listed.output and "service   inventory" in listed.output
        tool = None
        for _ in range(50):
            try:
                tool = await nats.connect(server.url, nkeys_seed=str(seed), allow_reconnect=False,
                                          max_reconnect_attempts=1, connect_timeout=2)
                break
            except nats.errors.Error:
                await asyncio.sleep(0.1)
        assert tool is not None, "the issued identity was not admitted"
        await tool.close()
    finally:
        server.stop()
