"""Scale mode: thousands of simulated SSH hosts on loopback, for benchmarks only.

Each simulated host is an asyncssh server on its own 127.0.0.1 port with its own host
key, accepting the lab user's key (and password).  It answers any ``sh -c`` script the
way a Linux host would for the commands labfleet sends (``/proc/stat``, ``/proc/meminfo``,
``/proc/loadavg``, ``nproc``, ``df -Pk``, compiler process counts, ``uname``,
``--version``) with plausible values that change over time; ``@name`` section markers
echoed by the script come back in place, so the monitor's poll script parses as from a
real host.  A host listed in ``<dir>/silent`` (one name per line, or ``*``) stops
answering commands until it is removed from the file.

Real sshd hosts (``labfleet lab up``) are for correctness; these are for scale.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

HOSTS_PER_PROCESS = 500


@dataclass
class SimHost:
    name: str
    port: int
    seed: int
    silent: bool = False
    # /proc/stat counters, advanced on every read
    user: int = 0
    idle: int = 0
    boot: float = 0.0

    def cpu_line(self) -> str:
        now = time.monotonic()
        elapsed = max(1, int((now - self.boot) * 100))
        rng = random.Random(self.seed + int(now / 10))
        busy = rng.random() * 0.9
        self.user += int(busy * 400) + 1
        self.idle += int((1 - busy) * 400) + 1
        return (f"cpu  {self.user} 0 {self.user // 4} {self.idle + elapsed} 12 0 3 0 0 0")


def _answer_command(host: SimHost, command: str) -> str:
    now = time.monotonic()
    rng = random.Random(host.seed * 7919 + int(now / 5))
    c = command.strip()
    if c.startswith("echo @"):
        return c[5:].split(";")[0].strip() + "\n"
    if c.startswith("echo "):
        return " ".join(shlex.split(c[5:])) + "\n"
    if "/proc/stat" in c:
        return host.cpu_line() + "\n"
    if "/proc/meminfo" in c:
        total = 16 * 1024 * 1024
        avail = int(total * (0.3 + 0.6 * rng.random()))
        return (f"MemTotal:       {total} kB\nMemFree:        {avail // 2} kB\n"
                f"MemAvailable:   {avail} kB\nBuffers:        1024 kB\nCached:     {avail // 3} kB\n")
    if "/proc/loadavg" in c:
        load = 8 * rng.random()
        return f"{load:.2f} {load * 0.8:.2f} {load * 0.6:.2f} 1/234 {4000 + host.seed % 1000}\n"
    if "nproc" in c or "_NPROCESSORS_ONLN" in c:
        return "8\n"
    if c.startswith("df"):
        total = 200 * 1024 * 1024
        used = int(total * (0.2 + 0.5 * rng.random()))
        pct = used * 100 // total
        return ("Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
                f"/dev/vda1      {total} {used} {total - used} {pct}% /\n")
    if "/comm" in c:
        return f"{rng.randint(0, 6)}\n"
    if c.startswith("uname"):
        return "x86_64\n" if "-m" in c else "Linux\n"
    if "/proc/cpuinfo" in c:
        return "processor\t: 0\nmodel name\t: labfleet simulated CPU\n"
    if "--version" in c:
        tool = c.split()[0]
        return f"{tool} (Debian 12.2.0-14) 12.2.0\n" if "gcc" in tool else f"{tool} 1.0\n"
    if c in ("true", ":", ""):
        return ""
    return ""


def answer(host: SimHost, command: str) -> str:
    """What a Linux host would print for command (sh -c scripts are run line by line)."""
    argv = shlex.split(command) if command else []
    script = command
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh", "bash") and argv[1] == "-c":
        script = argv[2]
    out = []
    for line in script.splitlines():
        for part in re.split(r";\s*(?=\S)", line):
            out.append(_answer_command(host, part))
    return "".join(out)


class _Server(asyncssh.SSHServer):
    def __init__(self, authorized: list[asyncssh.SSHKey], password: str) -> None:
        self.authorized = {k.public_data for k in authorized}
        self.password = password

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self.authorized

    def password_auth_supported(self) -> bool:
        return bool(self.password)

    def validate_password(self, username: str, password: str) -> bool:
        return password == self.password


def _silent_names(control: Path) -> set[str]:
    try:
        return {n.strip() for n in control.read_text().split() if n.strip()}
    except OSError:
        return set()


async def _serve_slice(hosts: list[SimHost], authorized_file: str, password: str,
                       control_dir: Path, keys_out: Path) -> None:
    authorized = asyncssh.read_public_key_list(authorized_file) if authorized_file else []
    key_lines = {}
    servers = []

    for host in hosts:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        key_lines[host.name] = host_key.export_public_key().decode().split()[:2]

        async def process(proc: asyncssh.SSHServerProcess, host: SimHost = host) -> None:
            while host.silent:  # a silent host never answers; the client times out
                await asyncio.sleep(1)
            proc.stdout.write(answer(host, proc.command or ""))
            proc.exit(0)

        try:
            servers.append(await asyncssh.create_server(
                lambda: _Server(authorized, password), "127.0.0.1", host.port,
                server_host_keys=[host_key], process_factory=process, encoding="utf-8",
                keepalive_interval=0, reuse_address=True, backlog=128))
        except OSError as exc:
            keys_out.with_suffix(".error").write_text(
                f"{host.name}: cannot listen on 127.0.0.1:{host.port}: {exc.strerror}; "
                "choose another --base-port")
            raise
    keys_out.write_text(json.dumps(key_lines))
    control = control_dir / "silent"
    while True:
        names = _silent_names(control)
        for host in hosts:
            host.silent = "*" in names or host.name in names
        await asyncio.sleep(1)


def _run_slice(hosts: list[SimHost], authorized_file: str, password: str, control_dir: str,
               keys_out: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    asyncio.run(_serve_slice(hosts, authorized_file, password, Path(control_dir),
                             Path(keys_out)))


def start(count: int, directory: Path, authorized_file: str, password: str = "",
          base_port: int = 22000, processes: int = 0) -> tuple[list[multiprocessing.Process], list[dict]]:  # type: ignore[type-arg]
    """Start the simulated hosts; returns the server processes and the hosts list."""
    directory.mkdir(parents=True, exist_ok=True)
    processes = processes or max(1, -(-count // HOSTS_PER_PROCESS))
    now = time.monotonic()
    hosts = [SimHost(name=f"sim{i:05d}", port=base_port + i, seed=i, boot=now - 3600,
                     user=1000 + i, idle=50000 + i) for i in range(count)]
    ctx = multiprocessing.get_context("spawn")
    workers = []
    for p in range(processes):
        part = hosts[p::processes]
        keys_out = directory / f"keys-{p}.json"
        keys_out.unlink(missing_ok=True)
        keys_out.with_suffix(".error").unlink(missing_ok=True)
        proc = ctx.Process(target=_run_slice, name=f"labfleet-sim-{p}", daemon=True,
                           args=(part, authorized_file, password, str(directory), str(keys_out)))
        proc.start()
        workers.append(proc)
    deadline = time.monotonic() + 60 + count / 50
    keys: dict[str, list[str]] = {}
    for p in range(processes):
        keys_out = directory / f"keys-{p}.json"
        while not keys_out.exists():
            if time.monotonic() > deadline or not workers[p].is_alive():
                for w in workers:
                    w.kill()
                error = keys_out.with_suffix(".error")
                raise RuntimeError("simulated hosts did not start" +
                                   (f": {error.read_text()}" if error.exists() else ""))
            time.sleep(0.1)
        keys.update(json.loads(keys_out.read_text()))
    listing = [{"name": h.name, "address": "127.0.0.1", "ssh_port": h.port, "user": "lab",
                "host_key": " ".join(keys[h.name])} for h in hosts]
    (directory / "hosts.json").write_text(json.dumps(listing))
    return workers, listing


def run_sim_cli(count: int, processes: int, base_port: int, out: str | None) -> int:
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env()
    directory = (paths.lab_dir.parent / f"{paths.lab_dir.name}-sim" if os.geteuid() == 0
                 else Path.home() / ".labfleet-sim")
    directory.mkdir(parents=True, exist_ok=True)
    key = paths.lab_dir / "keys" / "id_ed25519"
    if not key.exists():  # no lab up: the sim's own key pair
        key = directory / "id_ed25519"
        if not key.exists():
            import subprocess
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
    authorized = str(key) + ".pub"
    password_file = directory / "password"
    if not password_file.exists():
        import secrets
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
        password_file.chmod(0o600)
    workers, listing = start(count, directory, authorized, password_file.read_text().strip(),
                             base_port, processes)
    if out:
        Path(out).write_text(json.dumps(listing, indent=1))
    print(f"{count} simulated hosts on 127.0.0.1:{base_port}-{base_port + count - 1} "
          f"({len(workers)} processes), user lab, key {key}; "
          f"list in {out or directory / 'hosts.json'}; "
          f"silence hosts by naming them in {directory / 'silent'}; Ctrl-C stops", file=sys.stderr)
    try:
        while all(w.is_alive() for w in workers):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join(5)
    return 0
