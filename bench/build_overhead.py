"""What a build through labfleet costs over a plain ``ssh server make``, and how late its
log lines reach a follower of the gateway.

The build is a substantial C program, not a kernel: a tinyconfig kernel takes 1.5–3
minutes on 2 cores, too slow to alternate several times in one run.  The program
(``--files`` generated sources, each a few hundred lines of arithmetic, ``-O2``) is
served by the lab's git daemon.  Each run:

* labfleet: ``POST /api/v1/builds`` pinned to the lab's ``build1`` (fetch into the cached
  mirror, checkout, ``make -j<cores>``, collect, upload with SHA-256 verification) timed
  from the submit to the gateway reporting ``succeeded``; meanwhile ``GET
  /api/v1/builds/<id>/log?follow=1`` reads the log, and each line the Makefile prints
  with its wall-clock time is compared with the time it arrived (same machine clock);
* plain: ``ssh build1 'make -C tree clean && make -C tree -j<cores>'`` on a checkout
  made beforehand on the same server.

Runs alternate (labfleet, plain, labfleet, …); medians are compared.  Everything runs
through ``labfleet up`` (its own embedded NATS and PostgreSQL) and ``labfleet lab up``
(own lab directory, ``LABFLEET_BENCH_LAB_DIR``; brought down at the end if this started
it).  Last stdout line: one JSON object with ``overhead_pct`` (target < 5) and
``log_latency_p99_ms`` (target < 1000).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import median, percentile  # noqa: E402

LAB_DIR = os.environ.get("LABFLEET_BENCH_LAB_DIR", "/var/lib/labfleet-lab-bench")
REPO = "bench-cbuild.git"
SOURCE = """\
#include <stdint.h>
{funcs}
uint64_t unit_{n}(uint64_t x) {{ return {calls}; }}
"""
FUNC = """\
static uint64_t f{n}_{i}(uint64_t x) {{
    uint64_t acc = x ^ {i}u;
    for (int k = 0; k < 64; k++) {{
        acc = acc * 6364136223846793005u + 1442695040888963407u;
        acc ^= acc >> (k % 13 + 1);
        if (acc & 1) acc += (uint64_t)k * {i}u; else acc -= x >> (k % 7);
    }}
    return acc;
}}
"""
MAKEFILE = """\
SRCS := $(wildcard src/*.c)
OBJS := $(SRCS:.c=.o)
CFLAGS ?= -O2
app: $(OBJS) main.o
\t$(CC) -o $@ $^
%.o: %.c
\t@echo "LFTS $$(date +%s.%N) $<"
\t$(CC) $(CFLAGS) -c -o $@ $<
clean:
\trm -f app main.o $(OBJS)
"""


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_repo(cache: Path, files: int, funcs: int) -> Path:
    """The C program as a bare repository the lab's git daemon serves (made once)."""
    repo = cache / "git" / REPO
    stamp = repo / "labfleet-bench-shape"
    shape = f"{files}x{funcs}"
    if stamp.exists() and stamp.read_text() == shape:
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        for n in range(files):
            body = "".join(FUNC.format(n=n, i=i) for i in range(funcs))
            calls = " + ".join(f"f{n}_{i}(x)" for i in range(funcs))
            (work / "src" / f"unit{n}.c").write_text(SOURCE.format(funcs=body, n=n, calls=calls))
        decls = "".join(f"uint64_t unit_{n}(uint64_t);\n" for n in range(files))
        total = " + ".join(f"unit_{n}(1)" for n in range(files))
        (work / "main.c").write_text(
            f"#include <stdint.h>\n#include <stdio.h>\n{decls}"
            f"int main(void) {{ printf(\"%llu\\n\", (unsigned long long)({total})); return 0; }}\n")
        (work / "Makefile").write_text(MAKEFILE)
        env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@invalid",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@invalid"}
        for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                     ["git", "commit", "-q", "-m", "bench program"]):
            subprocess.run(argv, cwd=work, env=env, check=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True)
    (repo / "git-daemon-export-ok").touch()
    stamp.write_text(shape)
    return repo


def start_labfleet(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABFLEET_")}
    env.update(LABFLEET_LOG_JSON="false", LABFLEET_MONITOR_INTERVAL_S="2",
               LABFLEET_BUILD_MIN_DISK_GB="1", LABFLEET_DISK_WARNING_GB="1")
    log = open(data.parent / "up.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "labfleet.cli.main", "up", "--data-dir",
                             str(data), "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("labfleet up exited early; see its up.log")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("labfleet did not become healthy")


def follow_log(client: httpx.Client, build_id: str, latencies: list[float],
               notes: list[tuple[float, str]]) -> None:
    with client.stream("GET", f"/api/v1/builds/{build_id}/log", params={"follow": "1"},
                       timeout=None) as r:
        for line in r.iter_lines():
            arrived = time.time()
            if line.startswith("LFTS "):
                latencies.append((arrived - float(line.split()[1])) * 1000)
            elif line.startswith("[labfleet]"):
                notes.append((arrived, line[:70]))


def labfleet_run(client: httpx.Client, spec: dict[str, Any], latencies: list[float]) -> float:
    started, submitted = time.monotonic(), time.time()
    r = client.post("/api/v1/builds", json=spec)
    r.raise_for_status()
    build_id = r.json()["id"]
    notes: list[tuple[float, str]] = []
    follower = threading.Thread(target=follow_log, args=(client, build_id, latencies, notes),
                                daemon=True)
    follower.start()
    while True:
        view = client.get(f"/api/v1/builds/{build_id}").json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    if view["status"] != "succeeded":
        raise SystemExit(f"build {build_id} {view['status']}: {view.get('error')}")
    follower.join(10)
    # where the time went: each of the builder's step notes, seconds after the submit
    say("  " + "; ".join(f"+{at - submitted:.1f}s {text.removeprefix('[labfleet] ')[:40]}"
                         for at, text in notes))
    return elapsed


def ssh(lab: dict[str, Any], host: dict[str, Any], command: str) -> None:
    subprocess.run(["ssh", "-F", lab["ssh_config"], f"{host['user']}@{host['address']}",
                    command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each kind (alternated)")
    ap.add_argument("--files", type=int, default=120, help="C sources in the program")
    ap.add_argument("--funcs", type=int, default=24, help="functions per source")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")

    from labfleet.embedded.ports import free_port
    from labfleet.lab import lab as labmod
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState

    paths = LabPaths.from_env(LAB_DIR)
    was_up = LabState.load(paths.state_file) is not None
    labmod.up(labmod.LabSpec(build_servers=1, qemu_hosts=0, boards=0, missing_toolchains={}),
              paths, say=say)
    lab = labmod.status(paths)
    make_repo(paths.cache_dir, args.files, args.funcs)
    host = next(h for h in lab["hosts"] if h["name"] == "build1")
    url = lab["git"]["url"] + REPO
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-bench-build-"))
    port = free_port()
    proc = start_labfleet(tmp / "up", port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        creds = dict(line.split(": ", 1) for line in
                     (tmp / "up" / "admin-credentials").read_text().splitlines() if ": " in line)
        client = httpx.Client(base_url=base, timeout=60,
                              headers={"Authorization": f"Bearer {creds['api_token']}"})
        r = client.post("/api/v1/build-servers", json={
            "hostname": "bench-build1", "address": host["address"], "ssh_port": host["ssh_port"],
            "username": host["user"], "private_key": Path(host["key_path"]).read_text(),
            "expected_host_key_fingerprint": host["fingerprint"], "architectures": ["x86_64"]})
        if r.status_code >= 300:
            raise SystemExit(f"registration refused: {r.status_code} {r.text[:300]}")
        server_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/build-servers/{server_id}").json().get("status") != "online":
            if time.monotonic() > deadline:
                raise SystemExit("the build server did not come online")
            time.sleep(0.5)
        spec = {"repo_url": url, "ref": "main", "arch": "x86_64", "server": "bench-build1",
                "artifacts": ["app"]}
        tree = "bench-plain"
        cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout or 2)
        ssh(lab, host, f"rm -rf {tree} && git clone -q {url} {tree}")
        plain_cmd = f"make -C {tree} clean >/dev/null && make -C {tree} -j{cores} >/dev/null"
        say("warm-up build through labfleet (clones the mirror)")
        labfleet_run(client, spec, [])
        lf, plain, latencies = [], [], []
        for i in range(args.runs):
            lf.append(labfleet_run(client, spec, latencies))
            t = time.monotonic()
            ssh(lab, host, plain_cmd)
            plain.append(time.monotonic() - t)
            say(f"run {i + 1}: labfleet {lf[-1]:.1f} s, plain ssh make {plain[-1]:.1f} s")
        ssh(lab, host, f"rm -rf {tree}")
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)
        if not was_up:
            labmod.down(paths, say=say)
    result = {
        "build": f"C program, {args.files} sources x {args.funcs} functions, -O2, make -j{cores}",
        "runs": args.runs,
        "labfleet_median_s": round(median(lf), 2), "plain_median_s": round(median(plain), 2),
        "overhead_pct": round((median(lf) - median(plain)) / median(plain) * 100, 2),
        "log_lines_timed": len(latencies),
        "log_latency_p50_ms": round(percentile(latencies, 50), 1),
        "log_latency_p99_ms": round(percentile(latencies, 99), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
