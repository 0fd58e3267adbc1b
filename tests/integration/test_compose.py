"""docker-compose.yml: valid for the compose client, one container per service with a
health check, a three-node NATS cluster with R3 streams, PostgreSQL, the gateway on 8080.

No container engine runs here, so nothing is started with compose; the NATS cluster
configuration is instead run for real as three local nats-server processes (host names
swapped for loopback ports) and the services' streams are created on it with three
replicas, as the containers would.
"""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path

import nats
import pytest
import yaml

from labfleet.cli.registry import SERVICE_NAMES
from labfleet.embedded.nats import nats_server_binary
from labfleet.embedded.ports import free_port, wait_port
from labfleet.shared.bus import STREAMS, ensure_streams

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NATS_CONF = ROOT / "infra" / "compose" / "nats.conf"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
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


def check_deployment(services: dict[str, dict]) -> None:  # type: ignore[type-arg]
    assert set(services) == {*NATS_NODES, "postgres", *SERVICE_NAMES}
    for node in NATS_NODES:
        cmd = services[node]["command"]
        assert cmd[cmd.index("--server_name") + 1] == node
        assert "healthcheck" in services[node]
    for name in SERVICE_NAMES:
        svc = services[name]
        assert svc["command"] == ["run", name]
        env = svc["environment"]
        assert str(env["LABFLEET_STREAM_REPLICAS"]) == "3"
        assert env["LABFLEET_NATS_URL"].startswith("nats://nats-")
        assert "@postgres:5432/" in env["LABFLEET_DATABASE_URL"]
        assert svc["healthcheck"]["test"] == ["CMD", "labfleet", "health", name]
        assert set(svc["depends_on"]) == {*NATS_NODES, "postgres"}
    assert any(str(p).endswith("8080:8080") or (isinstance(p, dict) and p.get("target") == 8080)
               for p in services["gateway"]["ports"])
    assert services["gateway"]["environment"]["LABFLEET_HTTP_HOST"] == "0.0.0.0"


def test_compose_file_describes_the_scaled_deployment() -> None:
    """The file itself, read as YAML (anchors resolved), whatever client is installed."""
    check_deployment(yaml.safe_load(COMPOSE.read_text())["services"])
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
    services = yaml.safe_load(rendered.stdout)["services"]
    check_deployment(services)
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


async def test_the_compose_nats_cluster_runs_replicated_streams(tmp_path: Path) -> None:
    """The compose NATS config, run as three real nodes on loopback, serves R3 streams."""
    nodes = []
    routes = {node: free_port() for node in NATS_NODES}
    for node in NATS_NODES:
        client_port = free_port()
        conf = NATS_CONF.read_text()
        conf = conf.replace("port: 4222", f'listen: "127.0.0.1:{client_port}"').replace(
            "http_port: 8222", "").replace("/data/jetstream", str(tmp_path / node))
        conf = conf.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{routes[node]}")
        for other, port in routes.items():
            conf = conf.replace(f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{port}")
        path = tmp_path / f"{node}.conf"
        path.write_text(conf)
        proc = subprocess.Popen([nats_server_binary(), "-c", str(path), "--server_name", node],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append((proc, client_port))
    try:
        for _, port in nodes:
            assert wait_port("127.0.0.1", port, 15)
        nc = await nats.connect(f"nats://127.0.0.1:{nodes[0][1]}")
        try:
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
        # the message is readable through another node
        other = await nats.connect(f"nats://127.0.0.1:{nodes[2][1]}")
        try:
            msg = await other.jetstream().get_last_msg(STREAMS[0].name, "resource.compose_test")
            assert msg.data == b"r3"
        finally:
            await other.close()
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
