"""docker-compose.yml: valid for the compose client, one container per service with a
health check, a three-node NATS cluster with R3 streams, PostgreSQL, the gateway on 8080,
and the bus locked: each container mounts only its own NKEY seed and the CA.

No container engine runs here, so nothing is started with compose; the NATS cluster
configuration is instead run for real as three local nats-server processes (host names
swapped for loopback ports, /run/secrets for the files `labfleet nats compose-secrets`
wrote, whose certificates are also issued for 127.0.0.1): services log in over TLS with
their seeds, clients without credentials, TLS or the CA are refused, and the nodes route
with mutual TLS, refusing a node without a certificate of the deployment's CA.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from labfleet.cli.compose_secrets import (
    CONTAINER_OWNER,
    NATS_NODES,
    Layout,
    write_compose_secrets,
)
from labfleet.cli.main import build_app
from labfleet.cli.registry import SERVICE_NAMES
from labfleet.embedded.nats import nats_server_binary
from labfleet.embedded.ports import free_port, wait_port
from labfleet.shared.bus import STREAMS, Bus, ensure_streams
from labfleet.shared.events.system import Pong
from labfleet.shared.natsauth.identities import IdentityStore, connect_options
from labfleet.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NATS_CONF = ROOT / "infra" / "compose" / "nats.conf"
SECRETS_DIR = ROOT / "secrets"
SECRETS = {
    "LABFLEET_DB_PASSWORD": "compose-test-password",
    "LABFLEET_CREDENTIAL_KEY": "compose-test-key",
    "LABFLEET_SESSION_SECRET": "compose-test-session",
}


def compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``, whichever answers."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(argv[0]):
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return argv
    return None


def compose(client: list[str], *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # only PATH and the given variables: a developer's own LABFLEET_* must not leak in
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(ROOT)}
    return subprocess.run([*client, "-f", str(COMPOSE), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, timeout=120, env={**base, **env})


def secret_mounts(services: dict[str, dict], secrets: dict[str, dict],  # type: ignore[type-arg]
                  name: str) -> dict[str, Path]:
    """Where each secret of a container appears in it → the file on the host it comes from
    (compose's rule: a relative target is under /run/secrets)."""
    mounts: dict[str, Path] = {}
    for entry in services[name].get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        mounts[path] = (ROOT / secrets[source]["file"]).resolve()
    return mounts


def check_deployment(services: dict[str, dict], secrets: dict[str, dict]) -> None:  # type: ignore[type-arg]
    assert set(services) == {*NATS_NODES, "postgres", *SERVICE_NAMES}
    generated = Layout(SECRETS_DIR)
    # every secret compose names is a file `labfleet nats compose-secrets` writes
    assert {(ROOT / s["file"]).resolve() for s in secrets.values()} <= set(generated.files())
    for node in NATS_NODES:
        cmd = services[node]["command"]
        assert cmd[cmd.index("--server_name") + 1] == node
        assert "healthcheck" in services[node]
        # the node's own route certificate, the authorization block beside nats.conf
        assert secret_mounts(services, secrets, node) == {
            "/etc/nats/auth.conf": generated.auth,
            "/run/secrets/nats_ca": generated.ca,
            "/run/secrets/nats_server_cert": generated.server_cert,
            "/run/secrets/nats_server_key": generated.server_key,
            "/run/secrets/nats_cluster_cert": generated.cluster_cert(node),
            "/run/secrets/nats_cluster_key": generated.cluster_key(node),
        }
    for name in SERVICE_NAMES:
        svc = services[name]
        assert svc["command"] == ["run", name]
        env = svc["environment"]
        assert str(env["LABFLEET_STREAM_REPLICAS"]) == "3"
        # every node, over TLS only
        assert env["LABFLEET_NATS_URL"].split(",") == [f"tls://{n}:4222" for n in NATS_NODES]
        assert "@postgres:5432/" in env["LABFLEET_DATABASE_URL"]
        assert svc["healthcheck"]["test"] == ["CMD", "labfleet", "health", name]
        assert set(svc["depends_on"]) == {*NATS_NODES, "postgres"}
        # its own seed, nobody else's, and the CA
        assert secret_mounts(services, secrets, name) == {
            "/run/secrets/nats_seed": generated.seed(name),
            "/run/secrets/nats_ca": generated.ca}
        assert env["LABFLEET_NATS_SEED_FILE"] == "/run/secrets/nats_seed"
        assert env["LABFLEET_NATS_TLS_CA_FILE"] == "/run/secrets/nats_ca"
    assert any(str(p).endswith("8080:8080") or (isinstance(p, dict) and p.get("target") == 8080)
               for p in services["gateway"]["ports"])
    assert services["gateway"]["environment"]["LABFLEET_HTTP_HOST"] == "0.0.0.0"


def test_compose_file_describes_the_scaled_deployment() -> None:
    """The file itself, read as YAML (anchors resolved), whatever client is installed."""
    deployment = yaml.safe_load(COMPOSE.read_text())
    check_deployment(deployment["services"], deployment["secrets"])
    routes = re.findall(r"nats-route://([\w-]+):6222", NATS_CONF.read_text())
    assert sorted(routes) == list(NATS_NODES)


def test_compose_config_validates() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no compose client answers (neither `docker compose` nor `docker-compose`): "
                    "docker-compose.yml is not validated by one")
    checked = compose(client, "config", "-q", env=SECRETS)
    assert checked.returncode == 0, checked.stderr
    rendered = compose(client, "config", env=SECRETS)
    assert rendered.returncode == 0, rendered.stderr
    deployment = yaml.safe_load(rendered.stdout)
    services = deployment["services"]
    check_deployment(services, deployment["secrets"])
    # secrets are interpolated from the environment, never defaulted in the file
    assert services["inventory"]["environment"]["LABFLEET_CREDENTIAL_KEY"] == "compose-test-key"


def test_compose_refuses_to_run_without_its_secrets() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no compose client answers (neither `docker compose` nor `docker-compose`)")
    for missing in SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != missing}
        result = compose(client, "config", "-q", env=env)
        assert result.returncode != 0
        assert missing in result.stdout + result.stderr


# ---- the secrets ------------------------------------------------------------------------


def run_cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_app(), ["nats", "compose-secrets", *args])


def test_compose_secrets_writes_private_keys_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    owner = f"{os.getuid()}:{os.getgid()}"
    result = run_cli("--out", str(out), "--owner", owner, "--external", "ci-bot")
    assert result.exit_code == 0, result.output
    layout = Layout(out)
    written = [*layout.files(), out / "external" / "ci-bot.nk"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())
    # a seed per service, each admitted by auth.conf, which the embedded server's renderer wrote
    store = IdentityStore(out)
    keys = store.service_public_keys()
    assert set(keys) == set(SERVICE_NAMES) and len(set(keys.values())) == len(SERVICE_NAMES)
    auth = layout.auth.read_text()
    assert auth.startswith("authorization {")
    for key in [*keys.values(), *store.externals().values()]:
        assert f'"nkey": "{key}"' in auth
    assert store.operator_password() not in auth  # only its bcrypt hash
    # the certificates: issued by the CA, for the names the nodes are reached by
    ca = x509.load_pem_x509_certificate(layout.ca.read_bytes())
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {*NATS_NODES, "localhost"}
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for node in NATS_NODES:
        route = x509.load_pem_x509_certificate(layout.cluster_cert(node).read_bytes())
        route.verify_directly_issued_by(ca)
        usage = route.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)

    before = {p: p.read_bytes() for p in written}
    again = run_cli("--out", str(out))
    assert again.exit_code == 1
    assert "already holds compose secrets" in again.output and "--force" in again.output
    assert {p: p.read_bytes() for p in written} == before  # nothing was changed
    bad = run_cli("--out", str(tmp_path / "other"), "--owner", "labfleet")
    assert bad.exit_code == 1 and "give numeric UID:GID" in bad.output
    assert not (tmp_path / "other").exists()
    named = run_cli("--out", str(tmp_path / "other"), "--external", "CI Bot")
    assert named.exit_code == 1 and "external identity name 'CI Bot'" in named.output
    assert not (tmp_path / "other").exists()

    forced = run_cli("--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert all(layout.seed(n).read_bytes() != before[layout.seed(n)] for n in SERVICE_NAMES)
    assert layout.ca.read_bytes() != before[layout.ca]
    assert not (out / "external").exists()  # a new set: only what this run was asked for


def test_the_image_user_is_the_owner_compose_secrets_names() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid, gid = CONTAINER_OWNER.split(":")
    assert f"--uid {uid} --gid {gid}" in dockerfile and f"--gid {gid} labfleet" in dockerfile
    assert f"--owner {CONTAINER_OWNER}" in COMPOSE.read_text()


# ---- the cluster, run for real ------------------------------------------------------------


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    client_port: int
    route_port: int
    http_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.client_port}"

    def routez(self) -> dict:  # type: ignore[type-arg]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/routez",
                                    timeout=5) as reply:
            return json.loads(reply.read())


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"nats.conf no longer has {old!r}: the test's local rewrite needs it"
    return text.replace(old, new)


def node_conf(node: str, folder: Path, route_ports: dict[str, int], client_port: int,
              http_port: int, secrets_dir: Path) -> Path:
    """The compose nats.conf as ``node`` would run it, on loopback: each /run/secrets path
    becomes the generated file docker-compose.yml mounts there, auth.conf goes beside it."""
    deployment = yaml.safe_load(COMPOSE.read_text())
    mounts = secret_mounts(deployment["services"], deployment["secrets"], node)
    conf = NATS_CONF.read_text()
    conf = replace(conf, "port: 4222", f'listen: "127.0.0.1:{client_port}"')
    conf = replace(conf, 'http: "127.0.0.1:8222"', f'http: "127.0.0.1:{http_port}"')
    conf = replace(conf, "/data/jetstream", str(folder / "jetstream"))
    conf = replace(conf, "listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route_ports[node]}")
    for other, port in route_ports.items():
        conf = replace(conf, f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{port}")
    for other in set(NATS_NODES) - set(route_ports):
        conf = replace(conf, f"nats-route://{other}:6222", "")
    folder.mkdir(parents=True)
    for inside, host_file in mounts.items():
        local = secrets_dir / host_file.relative_to(SECRETS_DIR)
        if inside.startswith("/run/secrets/"):
            conf = replace(conf, f'"{inside}"', f'"{local}"')
        else:  # auth.conf, included from beside nats.conf
            shutil.copy(local, folder / Path(inside).relative_to("/etc/nats"))
    assert "/run/secrets/" not in conf, "nats.conf names a secret compose does not mount"
    path = folder / "nats.conf"
    path.write_text(conf)
    return path


def start_node(name: str, conf: Path, ports: tuple[int, int, int]) -> Node:
    log = conf.with_name("nats.log")
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf), "--server_name", name,
                             "-l", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = Node(name, proc, *ports, log=log)
    assert wait_port("127.0.0.1", node.client_port, 15), log.read_text() if log.exists() else ""
    return node


def stop(nodes: list[Node]) -> None:
    for node in nodes:
        node.process.terminate()
    for node in nodes:
        try:
            node.process.wait(10)
        except subprocess.TimeoutExpired:
            node.process.kill()


@dataclass
class Cluster:
    nodes: list[Node]
    secrets: Layout

    def settings(self, identity: str | None, *, ca: bool = True) -> Settings:
        return Settings(nats_url=",".join(n.url for n in self.nodes),
                        nats_seed_file=self.secrets.seed(identity) if identity else None,
                        nats_tls_ca_file=self.secrets.ca if ca else None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The three nodes of docker-compose.yml on loopback, with the generated secrets."""
    tmp = tmp_path_factory.mktemp("compose")
    layout = write_compose_secrets(tmp / "secrets")
    routes = {node: free_port() for node in NATS_NODES}
    nodes: list[Node] = []
    try:
        for name in NATS_NODES:
            ports = (free_port(), routes[name], free_port())
            conf = node_conf(name, tmp / name, routes, ports[0], ports[2], layout.dir)
            nodes.append(start_node(name, conf, ports))
        yield Cluster(nodes, layout)
    finally:
        stop(nodes)


async def connect(settings: Settings, identity: str, **extra: Any) -> nats.NATS:
    """As a service connects (shared/natsauth connect_options), once, without retrying."""
    servers, options = connect_options(settings, identity)
    return await nats.connect(servers, allow_reconnect=False, max_reconnect_attempts=1,
                              connect_timeout=3, **{**options, **extra})


async def test_the_compose_nats_cluster_runs_replicated_streams(cluster: Cluster) -> None:
    """A service logs in with its own seed over TLS and the cluster serves R3 streams."""
    nc = await connect(cluster.settings("inventory"), "inventory")
    try:
        assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while True:  # until the JetStream meta leader is elected
            try:
                await js.account_info()
                break
            except Exception:
                assert time.monotonic() < deadline, "JetStream cluster did not form"
                await asyncio.sleep(0.3)
        await ensure_streams(js, replicas=3)
        info = await js.stream_info(STREAMS[0].name)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        await js.publish("resource.compose_test", b"r3")
    finally:
        await nc.close()
    # readable through another node, by another service, with its own seed
    settings = cluster.settings("gateway")
    settings.nats_url = cluster.nodes[2].url
    other = await connect(settings, "gateway")
    try:
        msg = await other.jetstream().get_last_msg(STREAMS[0].name, "resource.compose_test")
        assert msg.data == b"r3"
    finally:
        await other.close()


async def test_the_cluster_refuses_clients_without_credentials_tls_or_the_ca(
        cluster: Cluster) -> None:
    # over TLS with the CA, but no identity
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(cluster.settings(None), "stranger")
    # a seed, but no CA: the server's certificate is not trusted
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await connect(cluster.settings("inventory", ca=False), "inventory")
    # plain NATS: the server requires TLS and says so before anything else is read
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].client_port), timeout=5) as raw:
        info = json.loads(raw.recv(4096).split(b" ", 1)[1])
        assert info["tls_required"] is True
        raw.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
        assert b"PONG" not in answer
    # and with everything, the same identity is in (and keeps its permissions)
    nc = await connect(cluster.settings("inventory"), "inventory")
    try:
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("build.cmd.list", b"{}", timeout=2)  # allowed; nobody answers
    finally:
        await nc.close()


async def test_the_nodes_route_with_mutual_tls_and_refuse_a_node_without_a_certificate(
        cluster: Cluster, tmp_path: Path) -> None:
    deadline = time.monotonic() + 20
    while not all(n.routez()["num_routes"] >= 2 for n in cluster.nodes):
        assert time.monotonic() < deadline, [n.routez() for n in cluster.nodes]
        await asyncio.sleep(0.3)
    first = cluster.nodes[0]
    peers = {r.get("remote_name") for r in first.routez()["routes"]}
    assert peers >= {"nats-2", "nats-3"}

    # a TLS peer on the route port that trusts the CA but presents no certificate
    ctx = ssl.create_default_context(cafile=str(cluster.secrets.ca))
    with socket.create_connection(("127.0.0.1", first.route_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError, match="(?i)certificate required"):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"PING\r\n")
                tls.recv(4096)
    assert "client didn't provide a certificate" in first.log.read_text()

    # a node of the same configuration, but with no route TLS at all: it does not join
    conf = tmp_path / "rogue.conf"
    conf.write_text(f'listen: "127.0.0.1:{free_port()}"\nhttp: "127.0.0.1:{(http := free_port())}"\n'
                    f"cluster {{\n  name: labfleet\n  listen: 127.0.0.1:{free_port()}\n"
                    f"  routes: [nats-route://127.0.0.1:{first.route_port}]\n}}\n")
    log = tmp_path / "rogue.log"
    rogue = subprocess.Popen([nats_server_binary(), "-c", str(conf), "--server_name", "rogue",
                              "-l", str(log)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(3)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/routez", timeout=5) as reply:
            assert json.loads(reply.read())["num_routes"] == 0
        assert {r.get("remote_name") for r in first.routez()["routes"]} == peers
        assert "rogue" not in peers
        assert "first record does not look like a TLS handshake" in first.log.read_text()
    finally:
        rogue.terminate()
        rogue.wait(10)

    # a node configured as compose's, with certificates of another deployment's CA
    foreign = write_compose_secrets(tmp_path / "foreign")
    routes = {"nats-1": first.route_port, "nats-2": free_port()}
    ports = (free_port(), routes["nats-2"], free_port())
    stranger = start_node("stranger", node_conf("nats-2", tmp_path / "stranger", routes,
                                                 ports[0], ports[2], foreign.dir), ports)
    try:
        await asyncio.sleep(3)
        assert stranger.routez()["num_routes"] == 0
        assert {r.get("remote_name") for r in first.routez()["routes"]} == peers
        # neither side trusts the other's CA
        assert "certificate signed by unknown authority" in stranger.log.read_text()
        assert "tls: bad certificate" in first.log.read_text()
    finally:
        stop([stranger])


async def test_a_service_container_starts_its_bus_and_passes_its_health_check(
        cluster: Cluster) -> None:
    """What a container does with the compose environment: the service's Bus connects over
    TLS with its seed, and `labfleet health <service>` (the container's health check)
    reaches it with the same secret."""
    settings = cluster.settings("inventory")
    settings.stream_replicas = 3
    bus = Bus.create(settings, "inventory")
    await bus.start()
    try:
        assert bus.nc.connected_url.scheme == "tls"

        async def pong(msg: Any) -> None:
            await msg.respond(Pong(service="inventory", instance="compose-test",
                                   started_at=datetime.now(timezone.utc),
                                   version="test").model_dump_json().encode())

        await bus.nc.subscribe("system.cmd.ping.inventory", cb=pong)
        await bus.nc.flush()
        env = {"PATH": os.environ["PATH"], "HOME": str(ROOT),
               "LABFLEET_NATS_URL": settings.nats_url,
               "LABFLEET_NATS_SEED_FILE": str(cluster.secrets.seed("inventory")),
               "LABFLEET_NATS_TLS_CA_FILE": str(cluster.secrets.ca)}
        labfleet = str(Path(sys.executable).with_name("labfleet"))
        checked = await asyncio.to_thread(
            subprocess.run, [labfleet, "health", "inventory"], capture_output=True, text=True,
            timeout=60, env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "inventory: alive (compose-test" in checked.stdout
        # without the CA the check fails, and says why
        no_ca = {k: v for k, v in env.items() if k != "LABFLEET_NATS_TLS_CA_FILE"}
        refused = await asyncio.to_thread(
            subprocess.run, [labfleet, "health", "inventory"], capture_output=True, text=True,
            timeout=60, env=no_ca)
        assert refused.returncode == 1
        assert "certificate verify failed" in refused.stderr
    finally:
        await bus.stop()
