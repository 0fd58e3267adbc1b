"""Who may say and hear what on the bus: one NATS identity per service, plus tooling.

The table below is the whole policy.  Each service gets exactly the subjects it
publishes (its own facts, the commands it sends), the commands it answers, the streams
it consumes and the key-value and object buckets it uses; everything else is refused by
the server.  What the rules protect:

* **Commands that carry secrets** travel on core NATS, never in a stream.  Only inventory
  subscribes to ``resource.cmd.*`` (registrations carry SSH passwords and keys); only the
  services that log in to hosts (monitor, builder, deployer) may *send*
  ``resource.cmd.credentials``, and the gateway, which sends every other command on behalf
  of people, is denied that one.
* **Replies** go to a private inbox per identity (``_INBOX_<name>.>``, see
  :func:`inbox_prefix`), so no identity can read another's answers (a credentials reply).
  Answering a request is allowed by ``allow_responses`` (only to the requester's inbox,
  once).
* **Streams** hold facts, never secrets: a service reads the streams it consumes (the
  gateway, which shows everything, all of them); writing is per owner — a service
  publishes only its own domain's events, defines only labfleet's streams, writes only
  its own buckets.
* **External tooling** (a CI system) may publish ``job.*`` and read the public event
  streams, nothing else: no command, no log, no dead letter, no bucket.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the streams ``shared/bus.py`` defines (kept here, not imported, so the policy reads alone;
#: a test checks both agree)
LABFLEET_STREAMS = ("RESOURCE", "HEALTH", "BUILD", "ARTIFACT", "REQUEST", "POLICY", "ENV",
                    "DEPLOY", "ALERT", "JOB", "SAMPLES", "LOGS", "DEADLETTER", "BENCH")
#: what external tooling may read: the facts of the lab, not logs, samples or dead letters
PUBLIC_STREAMS = ("RESOURCE", "HEALTH", "BUILD", "ARTIFACT", "REQUEST", "POLICY", "ENV",
                  "DEPLOY", "ALERT", "JOB")
#: the command domains the gateway sends on behalf of people
GATEWAY_COMMANDS = ("resource.cmd.*", "build.cmd.*", "artifact.cmd.*", "env.cmd.*",
                    "alert.cmd.*", "health.cmd.*", "job.cmd.*", "pipeline.cmd.*",
                    "system.cmd.ping.*")
#: commands whose request or reply carries a secret, and who may send them
SECRET_COMMANDS = {"resource.cmd.credentials": ("monitor", "builder", "deployer")}

OPERATOR = "operator"
EXTERNAL = "external"


def inbox_prefix(identity: str) -> str:
    """The reply-subject prefix of an identity: private, so replies reach only it."""
    return f"_INBOX_{identity.replace('.', '_').replace('-', '_')}"


@dataclass(frozen=True)
class Grant:
    """What one identity may do, in the server's terms."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    allow_responses: bool = False

    def to_config(self) -> dict[str, object]:
        publish: dict[str, object] = {"allow": list(self.publish)}
        if self.deny_publish:
            publish["deny"] = list(self.deny_publish)
        config: dict[str, object] = {"publish": publish,
                                     "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            config["allow_responses"] = True
        return config


@dataclass(frozen=True)
class ServiceNeeds:
    """A service's part of the bus, as the service uses it (see the table below)."""

    #: event subjects it publishes (into streams), and log subjects
    emits: tuple[str, ...] = ()
    #: command subjects it answers (core NATS, queue group ``<service>-cmd``)
    answers: tuple[str, ...] = ()
    #: command subjects it sends
    asks: tuple[str, ...] = ()
    #: streams it consumes (durable or ordered consumers)
    consumes: tuple[str, ...] = ()
    #: event subjects it subscribes to on core NATS (live views)
    listens: tuple[str, ...] = ()
    kv_writes: tuple[str, ...] = ()
    kv_reads: tuple[str, ...] = ()
    objects_write: bool = False
    objects_read: bool = False


SERVICES: dict[str, ServiceNeeds] = {
    "inventory": ServiceNeeds(
        emits=("resource.*",),
        answers=("resource.cmd.*",),
        asks=("build.cmd.list",),
    ),
    "monitor": ServiceNeeds(
        emits=("health.*", "sample.>"),
        answers=("health.cmd.*",),
        asks=("resource.cmd.credentials", "resource.cmd.list", "resource.cmd.get"),
        consumes=("RESOURCE",),
        kv_writes=("samples", "health"),
    ),
    "scheduler": ServiceNeeds(
        emits=("build.requested", "build.allocated", "build.rejected", "env.requested",
               "env.allocated", "env.rejected", "request.*", "policy.*"),
        answers=("build.cmd.submit", "env.cmd.create", "env.cmd.hosts"),
        asks=("artifact.cmd.list", "build.cmd.get"),
        consumes=("BUILD", "RESOURCE", "HEALTH", "SAMPLES", "ENV"),
        kv_reads=("samples", "health"),
    ),
    "builder": ServiceNeeds(
        emits=("build.started", "build.progress", "build.succeeded", "build.failed",
               "build.cancelled", "build.finished", "artifact.*", "log.build.>"),
        answers=("build.cmd.get", "build.cmd.list", "build.cmd.cancel", "build.cmd.pin",
                 "build.cmd.tag", "artifact.cmd.*"),
        asks=("resource.cmd.credentials",),
        # LOGS: a restarted build goes on from the last chunk it stored
        consumes=("BUILD", "REQUEST", "LOGS"),
        kv_writes=("builder-compile-history",),
        objects_write=True,
    ),
    "deployer": ServiceNeeds(
        emits=("deploy.*", "env.released", "env.status", "log.console.>"),
        answers=("env.cmd.get", "env.cmd.list", "env.cmd.release", "env.cmd.redeploy",
                 "env.cmd.rollback"),
        asks=("resource.cmd.credentials", "artifact.cmd.list", "build.cmd.get"),
        consumes=("ENV", "REQUEST", "DEPLOY", "LOGS"),
        objects_read=True,
    ),
    "alerter": ServiceNeeds(
        emits=("alert.*",),
        answers=("alert.cmd.*",),
        consumes=("HEALTH", "BUILD", "DEPLOY", "RESOURCE"),
    ),
    "pipeline": ServiceNeeds(
        emits=("pipeline.*", "job.rejected", "build.requested", "env.requested",
               "test.*"),
        answers=("pipeline.cmd.*",),
        asks=("build.cmd.get", "env.cmd.get", "env.cmd.release", "build.cmd.cancel"),
        consumes=("BUILD", "ENV", "DEPLOY", "JOB", "REQUEST"),
    ),
    "gateway": ServiceNeeds(
        asks=GATEWAY_COMMANDS,
        consumes=LABFLEET_STREAMS,
        listens=("resource.*", "health.*", "sample.>", "build.*", "artifact.*", "request.*",
                 "policy.*", "env.*", "deploy.*", "alert.*", "log.>", "job.*", "pipeline.*"),
        kv_reads=("samples", "health", "builder-compile-history"),
        objects_read=True,
    ),
}


def _js_read(stream: str) -> list[str]:
    """Consume a stream (durable, ephemeral, ordered) and fetch its messages by sequence."""
    return [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.API.CONSUMER.DELETE.{stream}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>"]


def _js_define(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]


#: stream lookups every client of JetStream makes (names by subject, info, account)
_JS_LOOKUP = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
              "$JS.API.STREAM.INFO.*"]


def service_grant(name: str, needs: ServiceNeeds, *, artifact_bucket: str = "artifacts") -> Grant:
    publish: list[str] = [*_JS_LOOKUP, f"system.cmd.ping.{name}", "deadletter.>"]
    for stream in LABFLEET_STREAMS:
        publish += _js_define(stream)
    publish += needs.emits
    publish += needs.asks
    for stream in needs.consumes:
        publish += _js_read(stream)
    for bucket in needs.kv_writes:
        publish += [f"$KV.{bucket}.>", *_js_define(f"KV_{bucket}"), *_js_read(f"KV_{bucket}")]
    for bucket in needs.kv_reads:
        publish += _js_read(f"KV_{bucket}")
    if needs.objects_write or needs.objects_read:
        publish += _js_read(f"OBJ_{artifact_bucket}")
    if needs.objects_write:
        publish += [f"$O.{artifact_bucket}.>", *_js_define(f"OBJ_{artifact_bucket}"),
                    f"$JS.API.STREAM.PURGE.OBJ_{artifact_bucket}"]
    subscribe = [f"{inbox_prefix(name)}.>", f"system.cmd.ping.{name}", *needs.answers,
                 *needs.listens]
    deny = [subject for subject, senders in SECRET_COMMANDS.items() if name not in senders]
    return Grant(publish=tuple(dict.fromkeys(publish)), subscribe=tuple(dict.fromkeys(subscribe)),
                 deny_publish=tuple(deny), allow_responses=True)


def external_grant() -> Grant:
    """External tooling: submit jobs, read the public streams; its replies on ``_INBOX.>``
    (no labfleet service uses that prefix, so a tool with nats-py's defaults works)."""
    publish: list[str] = [*_JS_LOOKUP, "job.*"]
    for stream in PUBLIC_STREAMS:
        publish += _js_read(stream)
    return Grant(publish=tuple(publish), subscribe=("_INBOX.>",))


def operator_grant() -> Grant:
    """The lab admin's own identity (the ``labfleet`` CLI's direct bus calls, tests,
    maintenance): everything, as the server's administrator would have."""
    return Grant(publish=(">",), subscribe=(">",), allow_responses=True)


def grants(*, artifact_bucket: str = "artifacts") -> dict[str, Grant]:
    """The grant of every service, by service name."""
    return {name: service_grant(name, needs, artifact_bucket=artifact_bucket)
            for name, needs in SERVICES.items()}
