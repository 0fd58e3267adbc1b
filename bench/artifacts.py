"""How fast labfleet stores and serves a build artifact, next to a plain ``sftp get``.

A 200 MB file (random bytes, ``--size-mb``) lies on a build server: a real OpenSSH server
on loopback (``tests/sshd.py``), on this same machine.  Each round:

* labfleet upload: the builder's own upload of a collected file (``BuildAttempt.upload``
  on a ``BuildHost``, its connections already open as they are after a build): read from
  the server through the OpenSSH master (``labfleet.shared.ssh.openssh``; SFTP over the
  pooled asyncssh connection where that is not possible), SHA-256 while streaming, stored
  in the JetStream object store ``artifacts`` (file storage, the embedded server's
  ``sync_interval: always``), then verified against the server's own checksum of the
  file (computed there meanwhile) and the digest the object store recorded;
* plain: OpenSSH's ``sftp`` getting the same file from the same sshd to local disk
  (over a master connection opened beforehand, as labfleet's is);
* labfleet download: ``GET /api/v1/artifacts/<build>/<name>`` from a running gateway
  (``labfleet run gateway``, its own process) written to a local file by ``curl``; the
  gateway streams the object store's chunks and checks their digest;
* plain again, next to the download;
* storing alone: the same bytes from memory through the builder's object-store writer
  (``store_only_s``), the floor under any upload into this store on this machine.

Runs alternate; medians are compared.  Ratio = labfleet throughput / plain throughput
(target >= 0.8 each).  NATS and PostgreSQL come from ``LABFLEET_NATS_URL`` /
``LABFLEET_DATABASE_URL`` or are started embedded (``bench/_stack.py``).  Progress on
stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import CpuMeter, median, real_stack  # noqa: E402
from labfleet.cli.stack import redact_url  # noqa: E402
from labfleet.shared.ssh.openssh import known_hosts_line  # noqa: E402

MB = 1_000_000


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256."""
    digest = hashlib.sha256()
    block = 4 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(block, left))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class PlainSftp:
    """OpenSSH's ``sftp`` over a master connection (ControlMaster) opened once."""

    def __init__(self, sshd: Any, workdir: Path) -> None:
        self.sshd = sshd
        self.control = workdir / "ctl.sock"
        known = workdir / "known_hosts"
        known.write_text(known_hosts_line(sshd.host, sshd.port, sshd.host_key))
        self.options = ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                        "-o", "BatchMode=yes", "-o", f"ControlPath={self.control}",
                        "-i", str(sshd.private_key_path)]
        self.master: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.master = subprocess.Popen(
            ["ssh", *self.options, "-o", "ControlMaster=yes", "-N", "-p", str(self.sshd.port),
             f"{self.sshd.username}@{self.sshd.host}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.control.exists():
            if self.master.poll() is not None or time.monotonic() > deadline:
                err = self.master.stderr.read().decode() if self.master.stderr else ""
                raise RuntimeError(f"ssh master connection to the test sshd failed: {err}")
            time.sleep(0.05)

    def get(self, remote: str, local: Path) -> float:
        started = time.monotonic()
        subprocess.run(["sftp", "-q", *self.options, "-P", str(self.sshd.port),
                        f"{self.sshd.username}@{self.sshd.host}:{remote}", str(local)],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.master and self.master.poll() is None:
            self.master.terminate()
            self.master.wait(10)


class Gateway:
    """``labfleet run gateway`` in its own process, as ``labfleet up`` runs it."""

    def __init__(self, nats_url: str, db_url: str, data_dir: Path) -> None:
        from labfleet.embedded.ports import free_port

        self.data_dir = data_dir
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "gateway.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LABFLEET_NATS_URL": nats_url, "LABFLEET_DATABASE_URL": db_url,
               "LABFLEET_DATA_DIR": str(data_dir), "LABFLEET_HTTP_PORT": str(self.port),
               "LABFLEET_LOG_JSON": "false", "LABFLEET_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labfleet.cli.main", "run", "gateway"], env=env,
            stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        self.token = ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        creds = self.data_dir / "admin-credentials"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.log.read_text()[-2000:]}")
            if creds.exists():
                try:
                    httpx.get(f"{self.url}/healthz", timeout=2)  # any answer: it serves
                    break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        else:
            raise RuntimeError(
                "the gateway did not start (or found users already and wrote no admin "
                f"credentials: use a database of its own): {self.log.read_text()[-2000:]}")
        for line in creds.read_text().splitlines():
            key, _, value = line.partition(": ")
            if key == "api_token":
                self.token = value
        if not self.token:
            raise RuntimeError(f"no api_token in {creds}")

    def download(self, object_path: str, local: Path) -> tuple[float, str]:
        """Seconds to fetch the artifact into ``local`` with curl; the gateway's digest."""
        headers = local.with_suffix(".headers")
        started = time.monotonic()
        done = subprocess.run(["curl", "-sS", "--fail-with-body", "-o", str(local),
                               "-D", str(headers), "-H", f"Authorization: Bearer {self.token}",
                               f"{self.url}/api/v1/artifacts/{object_path}"],
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode:
            body = local.read_text(errors="replace")[-2000:] if local.exists() else ""
            raise RuntimeError(f"the download failed: {body}\ngateway log: "
                               f"{self.log.read_text()[-3000:]}")
        took = time.monotonic() - started
        digest = ""
        for line in headers.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "x-checksum-sha256":
                digest = value.strip()
        return took, digest

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Builder:
    """The builder's upload path on its own: pool, build host, object store, build log."""

    def __init__(self, nc: Any, sshd: Any) -> None:
        from labfleet.builder.adapters.artifact_store import ArtifactStore
        from labfleet.builder.adapters.inventory import ServerAccess
        from labfleet.builder.adapters.remote import BuildHost
        from labfleet.shared.events.resource import (
            Arch,
            ResourceKind,
            ResourceView,
            SshTarget,
        )
        from labfleet.shared.memory import keep_large_buffers
        from labfleet.shared.settings import Settings
        from labfleet.shared.ssh import Credentials, SshPool

        settings = Settings()
        # as builder.main wires it
        keep_large_buffers()
        self.pool = SshPool(connect_timeout=settings.ssh_connect_timeout_s,
                            command_timeout=settings.ssh_command_timeout_s)
        view = ResourceView(
            resource_id=uuid.uuid4(), kind=ResourceKind.BUILD_SERVER, name="bench-server",
            ssh=SshTarget(address=sshd.host, port=sshd.port, username=sshd.username,
                          host_key=sshd.host_key),
            architectures=[Arch.X86_64])
        access = ServerAccess(view=view, creds=Credentials(username=sshd.username,
                                                            private_key=sshd.private_key))
        self.host = BuildHost(self.pool, access, command_timeout=settings.ssh_command_timeout_s)
        self.nc = nc
        self.store = ArtifactStore(nc.jetstream)
        #: what the builder service would have recorded of each upload
        self.recorded: dict[str, Any] = {}

    async def answer_artifact_lists(self) -> None:
        """Answer ``artifact.cmd.list`` as the builder service does from its records (the
        gateway asks it for an artifact's store and bucket before a download; the builder
        service itself does not run in this benchmark)."""
        from labfleet.shared.events.build import ArtifactListReply, ListArtifacts

        async def answer(msg: Any) -> None:
            ask = ListArtifacts.model_validate_json(msg.data)
            infos = [i for i in self.recorded.values()
                     if ask.build_id and i.object_name.startswith(f"{ask.build_id}/")]
            await msg.respond(ArtifactListReply(ok=True, build_id=ask.build_id,
                                                artifacts=infos).model_dump_json().encode())

        await self.nc.subscribe(ListArtifacts.subject, cb=answer)

    async def connect(self) -> tuple[str, str]:
        """Open the pooled connection and the OpenSSH master for files (a build has both
        open when it uploads); the pooled connection's cipher, and how files come."""
        a = self.host.access
        conn = await self.pool.connection(a.host, a.port, a.creds, a.host_key)
        self.host.prepare_transfer()
        master = await self.pool.bulk(a.host, a.port, a.creds, a.host_key)
        return (str(conn.get_extra_info("recv_cipher") or ""),
                "openssh" if master is not None else "sftp")

    async def upload(self, remote: str, name: str) -> tuple[float, Any]:
        from labfleet.builder.attempt import BuildAttempt
        from labfleet.builder.adapters.log_stream import BuildLog
        from labfleet.builder.domain import remote_plan as plan
        from labfleet.shared.events.build import BuildSpec
        from labfleet.shared.events.resource import Arch

        build_id = uuid.uuid4()
        log = await BuildLog(self.nc.jetstream(), build_id, 1).open()

        async def nothing(*_args: Any) -> None:
            return None

        attempt = BuildAttempt(
            build_id=build_id, number=1,
            spec=BuildSpec(repo_url="file:///bench", arch=Arch.X86_64, artifacts=[name]),
            host=self.host, ws=plan.Workspace(root="/nonexistent", build_id=build_id),
            log=log, store=self.store, toolchain_prefix="", jobs=1, on_phase=nothing,
            guard=nothing, server_name="bench-server")
        started = time.monotonic()
        [info] = await attempt.upload([(remote, name)], {"build_id": str(build_id)})
        took = time.monotonic() - started
        self.recorded[info.object_name] = info
        return took, info

    async def store_only(self, data: bytes, object_name: str) -> float:
        """Seconds to store ``data`` from memory through the same object-store writer: the
        part of an upload that no faster transfer from the server can take away."""
        started = time.monotonic()
        stored = await self.store.upload(object_name, MemoryFile(data))
        took = time.monotonic() - started
        if stored.size != len(data):
            raise RuntimeError(f"stored {stored.size} bytes of {len(data)}")
        await self.delete(object_name)
        return took

    async def delete(self, object_name: str) -> None:
        store = await self.store._open()  # noqa: SLF001 - the same bucket
        await store.delete(object_name)

    async def close(self) -> None:
        await self.pool.close()


class MemoryFile:
    """Bytes with the ``async read(n)`` of an SFTP file."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.at = 0

    async def read(self, n: int) -> bytes:
        out = bytes(self.view[self.at:self.at + n])
        self.at += len(out)
        return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import nats
    from labfleet.shared.bus import ensure_streams
    from tests.sshd import start_sshd

    size = args.size_mb * MB
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-bench-artifacts-"))
    sshd = plain = gateway = builder = nc = None
    try:
        sshd = start_sshd(tmp / "sshd")
        server_dir = tmp / "server"
        server_dir.mkdir()
        remote = server_dir / "Image"
        say(f"writing {args.size_mb} MB of random bytes to {remote}")
        expected = make_file(remote, size)
        local = tmp / "local"
        local.mkdir()
        plain = PlainSftp(sshd, tmp)
        plain.start()
        with real_stack() as (nats_url, db_url):
            say(f"NATS {redact_url(nats_url)}; starting the gateway")
            gateway = Gateway(nats_url, db_url, tmp / "gateway")
            nc = await nats.connect(nats_url)
            await ensure_streams(nc.jetstream())
            builder = Builder(nc, sshd)
            await builder.answer_artifact_lists()
            cipher, transfer = await builder.connect()
            gateway.wait_ready()
            say(f"pooled SSH connection cipher: {cipher}; files through {transfer}")
            rounds: list[dict[str, Any]] = []
            for n in range(1, args.rounds + 1):
                row: dict[str, Any] = {"round": n, "load_avg_before": loadavg()}
                meter = CpuMeter().start()
                up_s, info = await builder.upload(str(remote), "Image")
                meter.stop()
                row["labfleet_upload_cpu_s"] = round(meter.cpu_s, 3)
                row["labfleet_upload_cpu_by_program"] = meter.by_program
                if info.sha256 != expected or info.size != size:
                    raise RuntimeError(f"the stored artifact differs: {info.sha256} != {expected}")
                row["labfleet_upload_s"] = round(up_s, 3)
                meter = CpuMeter().start()
                row["plain_up_s"] = round(plain.get(str(remote), local / "plain-1"), 3)
                meter.stop()
                row["plain_up_cpu_s"] = round(meter.cpu_s, 3)
                row["plain_up_cpu_by_program"] = meter.by_program
                # curl runs in a thread: this loop answers the gateway's artifact look-up meanwhile
                down_s, digest = await asyncio.to_thread(
                    gateway.download, f"{info.object_name}", local / "Image")
                if digest != expected or file_sha256(local / "Image") != expected:
                    raise RuntimeError(f"the downloaded artifact differs from {expected}")
                row["labfleet_download_s"] = round(down_s, 3)
                row["store_only_s"] = round(await builder.store_only(
                    remote.read_bytes(), f"store-only-{n}"), 3)
                row["plain_down_s"] = round(plain.get(str(remote), local / "plain-2"), 3)
                if file_sha256(local / "plain-2") != expected:
                    raise RuntimeError("plain sftp fetched different bytes")
                row["load_avg"] = loadavg()
                await builder.delete(info.object_name)
                for f in local.iterdir():
                    f.unlink()
                say(f"round {n}: upload {row['labfleet_upload_s']} s vs sftp "
                    f"{row['plain_up_s']} s (CPU {row['labfleet_upload_cpu_s']} s vs "
                    f"{row['plain_up_cpu_s']} s; storing alone {row['store_only_s']} s); "
                    f"download {row['labfleet_download_s']} s vs sftp "
                    f"{row['plain_down_s']} s; load {row['load_avg']}")
                rounds.append(row)
            # before the stack stops under them
            await builder.close()
            await nc.close()
            gateway.stop()
            builder = nc = gateway = None
    finally:
        if builder:
            await builder.close()
        if nc:
            await nc.close()
        if gateway:
            gateway.stop()
        if plain:
            plain.stop()
        if sshd:
            sshd.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str) -> float:
        return median([r[key] for r in rounds])

    up, plain_up = med("labfleet_upload_s"), med("plain_up_s")
    down, plain_down = med("labfleet_download_s"), med("plain_down_s")
    mbs = lambda s: round(size / MB / s, 1)  # noqa: E731
    cores = os.cpu_count() or 1
    up_cpu = med("labfleet_upload_cpu_s")
    # the round whose upload CPU is the median one: where that CPU went
    typical = min(rounds, key=lambda r: abs(r["labfleet_upload_cpu_s"] - up_cpu))
    return {
        "bench": "artifacts", "size_mb": args.size_mb, "rounds": args.rounds,
        "ssh_cipher": cipher, "file_transfer": transfer,
        "upload_ratio_vs_sftp": round(plain_up / up, 3),
        "download_ratio_vs_sftp": round(plain_down / down, 3),
        "labfleet_upload_s": round(up, 3), "labfleet_upload_mb_s": mbs(up),
        "plain_sftp_up_s": round(plain_up, 3), "plain_sftp_up_mb_s": mbs(plain_up),
        "store_only_s": round(med("store_only_s"), 3),
        # every part runs on this machine's cores: an upload needing C CPU-seconds takes
        # at least C / cores seconds, so its ratio cannot pass plain_up_s * cores / C
        "cores": cores,
        "labfleet_upload_cpu_s": round(up_cpu, 3),
        "plain_sftp_up_cpu_s": round(med("plain_up_cpu_s"), 3),
        "upload_ratio_cpu_ceiling": round(plain_up * cores / up_cpu, 3),
        "labfleet_upload_cpu_by_program": typical["labfleet_upload_cpu_by_program"],
        "plain_sftp_up_cpu_by_program": typical["plain_up_cpu_by_program"],
        "labfleet_download_s": round(down, 3), "labfleet_download_mb_s": mbs(down),
        "plain_sftp_down_s": round(plain_down, 3), "plain_sftp_down_mb_s": mbs(plain_down),
        "load_avg": [r["load_avg"] for r in rounds],
        "per_round": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="artifact size (MB)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 1)")
    args = parser.parse_args()
    if args.rounds < 1 or args.size_mb < 1:
        parser.error("--rounds and --size-mb must be at least 1")
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
