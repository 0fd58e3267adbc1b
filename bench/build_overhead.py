"""What a build through labfleet costs over a plain ``ssh server make``, and how late its
log lines reach a follower of the gateway.

The build is a real kernel by default (``--program kernel``): the lab's ``linux.git``
(Debian's linux-source as one commit, served by the lab's git daemon), x86_64,
``tinyconfig`` plus the options the lab's boot kernels add (the fragment the kernel build
tests use), image target ``bzImage``; one such build takes 1.5–3 minutes on 2 cores.
``--program c`` builds a generated C program instead (``--files`` sources of ``--funcs``
functions, ``-O2``), for quick runs.  Each round:

* labfleet: ``POST /api/v1/builds`` pinned to the lab's ``build1``, timed from the submit
  to the arrival of the build's last log line at a follower of the gateway ("build
  succeeded", written once the outcome is recorded; the status is asked for every 3 s).
  The builder fetches into its cached mirror, checks the commit out (into the cleaned
  tree an earlier build left, else afresh), configures, compiles with ``make -j<cores>``,
  collects, uploads with SHA-256 verification; after the build it cleans and keeps or
  removes its tree (outside the timing; the plain run waits for that);
* plain: on a checkout of the same commit made beforehand on the same server, from clean
  each time (C: ``make clean``; kernel: an empty ``O=`` directory):
  ``make O=… ARCH=x86_64 tinyconfig``, the same fragment merged with
  ``merge_config.sh`` and ``olddefconfig``, ``make O=… -j<cores> bzImage``.

Log latency: meanwhile ``GET /api/v1/builds/<id>/log?follow=1`` reads the log.  For the
C program each line the Makefile prints carries its wall-clock time; for the kernel a
watcher on the build server (``tail -F`` of the builder's log file) stamps each line when
it lands in the file, and the compile's lines (``  CC  …``) are matched with their arrival
at the follower (same machine clock: the lab's hosts are namespaces of this machine).

Rounds alternate (labfleet, plain, labfleet, …) after one warm-up build through labfleet
(which clones the mirror; for the kernel only up to ``make prepare``); medians are
compared.  Per round the load average (1 min) at
its end and where labfleet's time went (the builder's step notes, seconds after the
submit) go to stderr and into the JSON.  Everything runs through ``labfleet up`` (its own
embedded NATS and PostgreSQL) and ``labfleet lab up`` (own lab directory,
``LABFLEET_BENCH_LAB_DIR``; brought down at the end if this started it); the builder's
settings (``LABFLEET_BUILDER_*``, e.g. ``LABFLEET_BUILDER_KEEP_TREES=0``) pass through to
it.  Last stdout
line: one JSON object with ``overhead_pct`` (target < 5; of the medians, and
``overhead_pct_paired_median``, the median of each round's own) and ``log_latency_p99_ms``
(target < 1000).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
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
KERNEL_ARCH = "x86_64"
KERNEL_CONFIG = "tinyconfig"
KERNEL_TARGET = "bzImage"
PLAIN_TREE = "bench-plain-tree"
PLAIN_OUT = "bench-plain-out"
PLAIN_FRAGMENT = "bench-plain.config"

# On the build server: stamp each line of the builder's log file with the time it landed
# there.  Its own session, killed when the bench closes the watcher's stdin.
WATCH = r"""log=$1
setsid sh -c 'tail -n +1 -F -s 0.02 "$1" 2>/dev/null | python3 -u -c "
import sys, time
for line in sys.stdin:
    sys.stdout.write(\"%.6f %s\" % (time.time(), line))
"' watch "$log" &
group=$!
cat > /dev/null
kill -- "-$group" 2>/dev/null
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


def kernel_fragment() -> list[str]:
    """The options the lab's boot kernels add to tinyconfig (as the kernel build tests
    give them): serial console, initramfs, ELF, virtio console …"""
    from labfleet.lab.images import GUEST

    return [line.strip() for name in ("common.config", f"{KERNEL_ARCH}.config")
            for line in (GUEST / name).read_text().splitlines() if line.startswith("CONFIG_")]


def start_labfleet(data: Path, port: int) -> subprocess.Popen[bytes]:
    # its own servers and settings; the builder's own (LABFLEET_BUILDER_*) pass through
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LABFLEET_") or k.startswith("LABFLEET_BUILDER_")}
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


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclass
class Server:
    """The lab's build1 as the bench reaches it: plain ssh with the lab's config."""

    lab: dict[str, Any]
    host: dict[str, Any]
    work_root: str = ""

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-F", self.lab["ssh_config"],
                f"{self.host['user']}@{self.host['address']}", command]

    def run(self, command: str, stdin: str | None = None) -> str:
        done = subprocess.run(self.argv(command), input=stdin, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"on {self.host['name']}: {command[:120]!r} exited with "
                             f"{done.returncode}: {done.stderr.strip()[-600:]}")
        return done.stdout

    def build_dir(self, build_id: str) -> str:
        return f"{self.work_root}/builds/{build_id}"

    def wait_gone(self, path: str, timeout: float = 120) -> None:
        """Until the builder has removed a finished build's directory."""
        deadline = time.monotonic() + timeout
        while self.run(f"test -e {shlex.quote(path)} && echo there || true").strip():
            if time.monotonic() > deadline:
                raise SystemExit(f"{path} was not removed after its build")
            time.sleep(0.5)


@dataclass
class LogWatch:
    """Stamps each line of a build's log file on the server as it lands there."""

    server: Server
    path: str
    written: dict[tuple[str, int], float] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.server.argv(shlex.join(["sh", "-c", WATCH, "watch", self.path])),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        seen: Counter[str] = Counter()
        for raw in self.proc.stdout:
            stamp, _, text = raw.decode(errors="replace").rstrip("\n").partition(" ")
            seen[text] += 1
            self.written[(text, seen[text])] = float(stamp)

    def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)


def is_kbuild_line(text: str) -> bool:
    """A line of the kernel compile: ``  CC      kernel/fork.o`` and the like."""
    return text.startswith("  ") and text[2:3].isupper() and len(text.split()) >= 2


@dataclass
class Program:
    """What is built, and how the plain ssh make builds the same thing."""

    kind: str
    server: Server
    url: str
    cores: int
    spec: dict[str, Any]
    describe: str

    def plain_setup(self, commit: str) -> None:
        tree, q = PLAIN_TREE, shlex.quote
        self.server.run(f"rm -rf {tree} {PLAIN_OUT} && git clone -q --no-checkout "
                        f"{q(self.url)} {tree} && git -C {tree} -c advice.detachedHead=false "
                        f"checkout -q --detach {q(commit)}")
        if self.kind == "kernel":
            self.server.run(f"cat > {PLAIN_FRAGMENT}", stdin="\n".join(kernel_fragment()) + "\n")

    def plain_build(self) -> str:
        """The timed command: a build from clean of what labfleet builds."""
        if self.kind == "c":
            return (f"make -C {PLAIN_TREE} clean >/dev/null && "
                    f"make -C {PLAIN_TREE} -j{self.cores} >/dev/null")
        mk = f"make -C {PLAIN_TREE} O=$HOME/{PLAIN_OUT} ARCH={KERNEL_ARCH}"
        return (f"mkdir {PLAIN_OUT} && {mk} {KERNEL_CONFIG} >/dev/null && "
                f"(cd {PLAIN_OUT} && $HOME/{PLAIN_TREE}/scripts/kconfig/merge_config.sh -m "
                f".config $HOME/{PLAIN_FRAGMENT}) >/dev/null && "
                f"{mk} olddefconfig >/dev/null && {mk} -j{self.cores} {KERNEL_TARGET} >/dev/null")

    def plain_clean(self) -> None:
        self.server.run(f"rm -rf {PLAIN_OUT}")

    def plain_remove(self) -> None:
        self.server.run(f"rm -rf {PLAIN_TREE} {PLAIN_OUT} {PLAIN_FRAGMENT}")


def follow_log(client: httpx.Client, build_id: str, lines: list[tuple[float, str]]) -> None:
    with client.stream("GET", f"/api/v1/builds/{build_id}/log", params={"follow": "1"},
                       timeout=None) as r:
        for line in r.iter_lines():
            lines.append((time.time(), line))


def latencies_ms(program: Program, lines: list[tuple[float, str]],
                 watch: LogWatch | None) -> list[float]:
    if program.kind == "c":
        return [(at - float(text.split()[1])) * 1000 for at, text in lines
                if text.startswith("LFTS ")]
    assert watch is not None
    out, seen = [], Counter[str]()
    for at, text in lines:
        if text.startswith("[labfleet]"):
            continue
        seen[text] += 1
        written = watch.written.get((text, seen[text]))
        if written is not None and is_kbuild_line(text):
            out.append((at - written) * 1000)
    return out


def labfleet_run(client: httpx.Client, program: Program) -> dict[str, Any]:
    """One build through the API: its time, its log latencies and where the time went.

    The build's end is the arrival of its last log line (the builder writes "build
    succeeded" after recording the outcome), so the status is asked for only every few
    seconds: asking ten times a second would load the gateway and the builder and slow
    the very build being timed."""
    submitted = time.time()
    r = client.post("/api/v1/builds", json=program.spec)
    if r.status_code >= 300:
        raise SystemExit(f"build refused: {r.status_code} {r.text[:300]}")
    build_id = r.json()["id"]
    watch = None
    if program.kind == "kernel":
        watch = LogWatch(program.server, f"{program.server.build_dir(build_id)}/build.log")
        watch.start()
    lines: list[tuple[float, str]] = []
    follower = threading.Thread(target=follow_log, args=(client, build_id, lines), daemon=True)
    follower.start()
    while True:
        follower.join(3.0)
        view = client.get(f"/api/v1/builds/{build_id}").json()
        if not follower.is_alive() or view["status"] in ("failed", "cancelled"):
            break
    load = load1()
    if watch is not None:
        watch.stop()
    if view["status"] != "succeeded" or not lines or \
            not lines[-1][1].startswith("[labfleet] build succeeded"):
        raise SystemExit(f"build {build_id} {view['status']}: {view.get('error')}")
    elapsed = lines[-1][0] - submitted
    # where the time went: each of the builder's step notes, seconds after the submit
    steps = [(round(at - submitted, 1), text.removeprefix("[labfleet] ")[:60])
             for at, text in lines if text.startswith("[labfleet]")]
    say("  " + "; ".join(f"+{at:.1f}s {text[:40]}" for at, text in steps))
    program.server.wait_gone(program.server.build_dir(build_id))
    return {"id": build_id, "seconds": elapsed, "load1": load, "commit": view.get("commit"),
            "steps": steps, "latencies": latencies_ms(program, lines, watch)}


def plain_run(program: Program) -> dict[str, Any]:
    t = time.monotonic()
    program.server.run(program.plain_build())
    elapsed = time.monotonic() - t
    load = load1()
    program.plain_clean()
    return {"seconds": elapsed, "load1": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--program", choices=["kernel", "c"], default="kernel",
                    help="what is built: the lab's kernel (default) or a generated C program")
    ap.add_argument("--rounds", "--runs", dest="rounds", type=int, default=3,
                    help="rounds of one labfleet and one plain build (alternated)")
    ap.add_argument("--files", type=int, default=120, help="C sources in the program (c)")
    ap.add_argument("--funcs", type=int, default=24, help="functions per source (c)")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")

    from labfleet.embedded.ports import free_port
    from labfleet.lab import gitrepos
    from labfleet.lab import lab as labmod
    from labfleet.lab.paths import LabPaths
    from labfleet.lab.state import LabState

    paths = LabPaths.from_env(LAB_DIR)
    if args.program == "kernel":
        gitrepos.ensure_linux(paths, say)  # the lab's kernel mirror, made once per machine
    else:
        make_repo(paths.cache_dir, args.files, args.funcs)
    was_up = LabState.load(paths.state_file) is not None
    labmod.up(labmod.LabSpec(build_servers=1, qemu_hosts=0, boards=0, missing_toolchains={}),
              paths, say=say)
    lab = labmod.status(paths)
    host = next(h for h in lab["hosts"] if h["name"] == "build1")
    server = Server(lab, host)
    tmp = Path(tempfile.mkdtemp(prefix="labfleet-bench-build-"))
    port = free_port()
    proc = start_labfleet(tmp / "up", port)
    base = f"http://127.0.0.1:{port}"
    program: Program | None = None
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
        while (view := client.get(f"/api/v1/build-servers/{server_id}").json()).get(
                "status") != "online":
            if time.monotonic() > deadline:
                raise SystemExit("the build server did not come online")
            time.sleep(0.5)
        caps = view.get("capabilities") or {}
        cores = int(caps.get("cpu_cores") or server.run("nproc").strip())
        home = server.run('printf %s "$HOME"')
        server.work_root = f"{(caps.get('work_dir') or home).rstrip('/')}/labfleet"
        if args.program == "kernel":
            url = lab["git"]["url"] + "linux.git"
            spec = {"repo_url": url, "ref": "main", "arch": KERNEL_ARCH, "server": "bench-build1",
                    "config": KERNEL_CONFIG, "config_options": kernel_fragment(),
                    "make_targets": [KERNEL_TARGET], "backend": "make"}
            describe = (f"Linux ({url}) {KERNEL_ARCH} {KERNEL_CONFIG} + the lab fragment, "
                        f"make -j{cores} {KERNEL_TARGET}")
        else:
            url = lab["git"]["url"] + REPO
            spec = {"repo_url": url, "ref": "main", "arch": "x86_64", "server": "bench-build1",
                    "artifacts": ["app"]}
            describe = (f"C program, {args.files} sources x {args.funcs} functions, -O2, "
                        f"make -j{cores}")
        program = Program(args.program, server, url, cores, spec, describe)
        # the warm-up clones the server's mirror and leaves a checkout for the next build;
        # for the kernel it stops after ``make prepare`` (its outcome is not measured)
        warm_spec = dict(spec, make_targets=["prepare"], artifacts=[".config"]) \
            if args.program == "kernel" else spec
        say(f"warm-up build through labfleet (clones the mirror): {describe}")
        warm = labfleet_run(client, Program(args.program, server, url, cores, warm_spec,
                                            describe))
        say(f"warm-up: {warm['seconds']:.1f} s; plain checkout of {warm['commit']}")
        program.plain_setup(warm["commit"])
        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            lf = labfleet_run(client, program)
            plain = plain_run(program)
            rounds.append({"labfleet": lf, "plain": plain})
            say(f"round {i + 1}: labfleet {lf['seconds']:.1f} s (load {lf['load1']:.2f}), "
                f"plain ssh make {plain['seconds']:.1f} s (load {plain['load1']:.2f})")
        program.plain_remove()
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)
        if not was_up:
            labmod.down(paths, say=say)
    lf_s = [r["labfleet"]["seconds"] for r in rounds]
    plain_s = [r["plain"]["seconds"] for r in rounds]
    latencies = [ms for r in rounds for ms in r["labfleet"]["latencies"]]
    result = {
        "build": program.describe,
        "program": args.program,
        "rounds": args.rounds,
        "labfleet_median_s": round(median(lf_s), 2), "plain_median_s": round(median(plain_s), 2),
        "overhead_pct": round((median(lf_s) - median(plain_s)) / median(plain_s) * 100, 2),
        # each labfleet build against the plain one beside it: less swayed by one round
        # whose plain build happened to run fast or slow
        "overhead_pct_paired_median": round(median(
            [(lf - pl) / pl * 100 for lf, pl in zip(lf_s, plain_s, strict=True)]), 2),
        "log_lines_timed": len(latencies),
        "log_latency_p50_ms": round(percentile(latencies, 50), 1),
        "log_latency_p99_ms": round(percentile(latencies, 99), 1),
        "per_round": [{"labfleet_s": round(r["labfleet"]["seconds"], 1),
                       "labfleet_load1": r["labfleet"]["load1"],
                       "plain_s": round(r["plain"]["seconds"], 1),
                       "plain_load1": r["plain"]["load1"],
                       "labfleet_steps": r["labfleet"]["steps"]} for r in rounds],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
