"""The commands a build runs on its server, as argument lists (never strings).

Scripts are constants; everything that comes from a build spec travels as a positional
argument (``sh -c SCRIPT name arg1 arg2 …``) so no spec value is ever parsed by a shell.

Layout under the work root (``<work dir>/labfleet``):

``mirrors/<sha1 of url>``  a bare mirror per repository, cloned once, fetched later
``builds/<build id>/src``  the checkout of one build
``trees/<sha1 of url>/<build id>``  a finished build's checkout, cleaned and kept for the
next build of the repository (a kernel tree takes seconds to check out afresh)
``builds/<build id>/build.log``, ``pid``, ``exit-<step>``  the detached step's traces
"""
from __future__ import annotations

import hashlib
import shlex
import uuid
from dataclasses import dataclass

from labfleet.shared.events.build import BuildSpec
from labfleet.shared.events.resource import Arch

#: what the kernel's Makefile calls each architecture
KERNEL_ARCH: dict[Arch, str] = {
    Arch.X86_64: "x86_64",
    Arch.ARM: "arm",
    Arch.ARM64: "arm64",
    Arch.RISCV64: "riscv",
}


@dataclass(frozen=True)
class Workspace:
    root: str
    build_id: uuid.UUID

    @property
    def mirrors(self) -> str:
        return f"{self.root}/mirrors"

    def mirror(self, url: str) -> str:
        return f"{self.mirrors}/{_url_key(url)}"

    def spare_trees(self, url: str) -> str:
        """Where finished builds of ``url`` leave their cleaned checkouts for the next."""
        return f"{self.root}/trees/{_url_key(url)}"

    @property
    def build_dir(self) -> str:
        return f"{self.root}/builds/{self.build_id}"

    @property
    def src(self) -> str:
        return f"{self.build_dir}/src"

    @property
    def log(self) -> str:
        return f"{self.build_dir}/build.log"


def _url_key(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - a name, not a secret


def work_root(work_dir: str) -> str:
    return f"{work_dir.rstrip('/')}/labfleet"


# ---- steps ------------------------------------------------------------------------------

# git writes a reflog entry for the clone and the checkout, naming "you" in it; with no
# user.email configured it asks the resolver for the host's domain, which on a server
# without working DNS waits out the resolver's timeout (measured: 10 s per command).  An
# address from EMAIL (the user's own wins) skips that lookup.
GIT_IDENT = 'export EMAIL="${EMAIL:-labfleet-builder@localhost}"\n'

FETCH = GIT_IDENT + r"""set -e
url=$1 mirror=$2
mkdir -p "${mirror%/*}"
exec 9>"$mirror.lock"
flock 9
if [ -d "$mirror" ]; then
  echo "==> fetch $url"
  git -C "$mirror" fetch --prune --tags origin
else
  echo "==> clone --mirror $url"
  rm -rf "$mirror.tmp"
  git clone --mirror "$url" "$mirror.tmp"
  mv "$mirror.tmp" "$mirror"
fi
"""

# A finished build's checkout of the same repository is taken over when there is one
# (``mv`` is a rename: two builds never get the same tree), forced to the commit and
# cleaned of everything untracked or ignored, so the tree is exactly the commit's, as a
# fresh checkout would be; only files that differ are written.  Anything wrong with it
# (a repacked mirror, a stale lock) and it is removed and the commit checked out afresh.
# Hooks are off: a build may have written into the tree's .git.
CHECKOUT = GIT_IDENT + r"""set -e
mirror=$1 src=$2 commit=$3 spares=$4
echo "==> checkout $commit"
rm -rf "$src"
for tree in "$spares"/*; do
  [ -d "$tree" ] || continue
  mv "$tree" "$src" 2>/dev/null || continue
  if git -C "$src" -c core.hooksPath=/dev/null -c advice.detachedHead=false \
       checkout --quiet --force --detach "$commit" && git -C "$src" clean -ffdxq; then
    echo "==> reused the tree of build ${tree##*/}"
    exit 0
  fi
  echo "==> the kept tree ${tree##*/} is not usable; checking out afresh"
  rm -rf "$src"
  break
done
git clone --quiet --shared --no-checkout "$mirror" "$src"
git -C "$src" -c advice.detachedHead=false checkout --quiet --detach "$commit"
"""

# $1 = source tree, $2 = config target, $3 = number of fragments, then the fragments,
# then the make variables
CONFIGURE = r"""set -e
src=$1 config=$2 n=$3
shift 3
frags=""
i=0
while [ "$i" -lt "$n" ]; do frags="$frags $1"; shift; i=$((i + 1)); done
echo "==> make $config"
make -C "$src" "$@" "$config"
if [ "$n" -gt 0 ]; then
  echo "==> merge_config.sh$frags"
  cd "$src"
  env "$@" ./scripts/kconfig/merge_config.sh -m .config $frags
  make -C "$src" "$@" olddefconfig
fi
"""


def toolchain_variables(spec: BuildSpec, prefix: str) -> list[str]:
    """Make variables selecting the toolchain: kernel style with a config, CC otherwise."""
    if spec.config:
        out = [f"ARCH={KERNEL_ARCH[spec.arch]}"]
        if prefix:
            out.append(f"CROSS_COMPILE={prefix}")
        return out
    return [f"CROSS_COMPILE={prefix}", f"CC={prefix}gcc"] if prefix else []


def fetch_step(ws: Workspace, url: str) -> list[str]:
    return ["sh", "-c", FETCH, "fetch", url, ws.mirror(url)]


def checkout_step(ws: Workspace, url: str, commit: str) -> list[str]:
    return ["sh", "-c", CHECKOUT, "checkout", ws.mirror(url), ws.src, commit,
            ws.spare_trees(url)]


def configure_step(ws: Workspace, spec: BuildSpec, prefix: str) -> list[str] | None:
    if not spec.config:
        return None
    frags = list(spec.config_fragments)
    return ["sh", "-c", CONFIGURE, "configure", ws.src, spec.config, str(len(frags)), *frags,
            *toolchain_variables(spec, prefix)]


def compile_step(ws: Workspace, spec: BuildSpec, prefix: str, jobs: int) -> list[str]:
    return ["make", "-C", ws.src, f"-j{max(1, jobs)}", *toolchain_variables(spec, prefix),
            *spec.make_targets]


def rev_parse(ws: Workspace, url: str, ref: str) -> list[str]:
    return ["git", "--git-dir", ws.mirror(url), "rev-parse", "--verify", "--quiet",
            f"{ref}^{{commit}}"]


# ---- running a step detached ------------------------------------------------------------

# The step runs in its own session and process group (setsid; a background job of a
# non-interactive shell is no group leader, so setsid does not fork and $! is the group).
# Output goes to build.log, the exit status to exit-<step>; the pid file lets any later
# builder kill the whole group.  The leader's arguments carry the build directory, which
# is how a kill recognises it (and how an operator finds a build's processes).
# The pid is answered once the group exists (or the step has already ended): setsid
# makes the group only after it has started, and a status or follow asked in between
# would find no group and take the step for killed.
#
# Where flock(1) exists (util-linux, busybox), the step's shell holds lock-<step> until it
# has written the exit status (the command itself does not inherit it), so a follow waits
# on the lock instead of polling; the pid is then answered once the lock is held.
LAUNCH = r"""dir=$1 step=$2
shift 2
cd "$dir" || exit 97
rm -f "exit-$step"
setsid sh -c '
  step=$2; shift 2
  exec 9> "lock-$step"
  if command -v flock > /dev/null 2>&1; then flock 9; fi
  "$@" 9>&- >> build.log 2>&1 < /dev/null
  echo $? > "exit-$step.tmp"; mv "exit-$step.tmp" "exit-$step"
  rm -f pid
' labfleet-step "$dir" "$step" "$@" > /dev/null 2>&1 < /dev/null &
pid=$!
echo "$pid" > pid
locking=
if command -v flock > /dev/null 2>&1; then locking=yes; fi
i=0
until { kill -s 0 -- "-$pid" 2>/dev/null \
        && { [ -z "$locking" ] || ! flock -n -s "lock-$step" true 2>/dev/null; }; } \
      || [ -e "exit-$step" ] || [ "$i" -ge 200 ]; do
  sleep 0.05; i=$((i + 1))
done
echo "$pid"
"""

# Prints the exit status once written, "running" while the group lives, "gone" otherwise.
STATUS = r"""dir=$1 step=$2 pid=$3
if [ -f "$dir/exit-$step" ]; then cat "$dir/exit-$step"
elif kill -s 0 -- "-$pid" 2>/dev/null; then echo running
else echo gone
fi
"""

# Kills the process group named in the pid file: TERM, a grace period, then KILL.  A pid
# whose leader lives but runs something else was reused: leave it alone.
KILL = r"""dir=$1 grace=$2
pid=$(cat "$dir/pid" 2>/dev/null) || exit 0
[ -n "$pid" ] || exit 0
kill -s 0 -- "-$pid" 2>/dev/null || exit 0
if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$dir"; then
  exit 0
fi
kill -s TERM -- "-$pid" 2>/dev/null
i=0
while kill -s 0 -- "-$pid" 2>/dev/null && [ "$i" -lt "$((grace * 10))" ]; do
  sleep 0.1; i=$((i + 1))
done
kill -s KILL -- "-$pid" 2>/dev/null
echo killed
"""

PREPARE = r"""set -e
dir=$1
rm -rf "$dir"
mkdir -p "$dir"
: > "$dir/build.log"
"""


def prepare(ws: Workspace) -> list[str]:
    return ["sh", "-c", PREPARE, "prepare", ws.build_dir]


def launch(ws: Workspace, step: str, argv: list[str]) -> list[str]:
    return ["sh", "-c", LAUNCH, "labfleet-step", ws.build_dir, step, *argv]


# Streams the log from byte $4 until the step is over: its exit status written, or its
# process group gone.  Not ``tail --pid`` of the step's leader itself: the leader's
# parent has exited, so init reaps it, and until then a zombie counts as alive (measured:
# 1.6-2 s after every step on a machine whose init reaps late).  The watcher is this
# shell's own child, reaped the moment it ends; tail then prints the rest and stops.
# The watcher blocks on the step's lock (see LAUNCH) while it is held, which costs
# nothing however long a compile takes; without flock, or for a step launched without the
# lock, it checks every 0.1 s (a sleep started ten times a second).
FOLLOW = r"""dir=$1 step=$2 pid=$3 from=$4
cd "$dir" || exit 97
(if [ -e "lock-$step" ] && command -v flock > /dev/null 2>&1; then
   flock -s "lock-$step" true 2>/dev/null
 fi
 while [ ! -e "exit-$step" ] && kill -s 0 -- "-$pid" 2>/dev/null; do sleep 0.1; done) &
tail -c "+$from" -f --pid=$! -s 0.1 build.log
"""


def follow(ws: Workspace, step: str, offset: int, pid: int) -> list[str]:
    """Stream the log from byte ``offset`` until the step has ended."""
    return ["sh", "-c", FOLLOW, "labfleet-follow", ws.build_dir, step, str(pid),
            str(offset + 1)]


def step_status(ws: Workspace, step: str, pid: int) -> list[str]:
    return ["sh", "-c", STATUS, "labfleet-status", ws.build_dir, step, str(pid)]


def kill_group(build_dir: str, grace_s: int = 5) -> list[str]:
    return ["sh", "-c", KILL, "labfleet-kill", build_dir, str(grace_s)]


# A finished build's directory goes; its checkout, cleaned (tracked files as committed,
# nothing untracked or ignored), is kept for the next build of the repository unless
# ``keep`` trees are kept already.
CLEANUP = r"""dir=$1 spares=$2 keep=$3
src=$dir/src
if [ "$keep" -gt 0 ] && [ -d "$src/.git" ] && \
   [ "$(ls -A "$spares" 2>/dev/null | wc -l)" -lt "$keep" ] && \
   git -C "$src" -c core.hooksPath=/dev/null reset --quiet --hard && \
   git -C "$src" clean -ffdxq && mkdir -p "$spares"; then
  mv "$src" "$spares/${dir##*/}" 2>/dev/null || true
fi
rm -rf -- "$dir"
"""


def cleanup(ws: Workspace, url: str, keep_trees: int = 1) -> list[str]:
    return ["sh", "-c", CLEANUP, "labfleet-cleanup", ws.build_dir, ws.spare_trees(url),
            str(max(0, keep_trees))]


# OpenSSL's SHA-256 uses the CPU's SHA instructions where coreutils' sha256sum does not:
# 200 MB in 0.3 s instead of 1.4 s, and this runs once per build on every artifact
_SHA256 = ('if command -v openssl >/dev/null 2>&1; then exec openssl dgst -sha256 -r -- "$@"; '
           'else exec sha256sum -- "$@"; fi')


def sha256sums(paths: list[str]) -> list[str]:
    """SHA-256 of each file, one ``<hex> <path>`` line each (see :func:`parse_sha256sums`)."""
    return ["sh", "-c", _SHA256, "sha256", *paths]


def parse_sha256sums(out: str) -> dict[str, str]:
    """path → hex digest from sha256sum (``<hex>  <path>``) or ``openssl dgst -r``
    (``<hex> *<path>``) output."""
    sums: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, rest = line.partition(" ")
        path = rest[1:] if rest[:1] in ("*", " ") else rest
        if digest and path:
            sums[path] = digest.lower()
    return sums


def describe(argv: list[str]) -> str:
    """A short human form of a step for the log header (scripts are not shown)."""
    if argv[:2] == ["sh", "-c"]:
        return " ".join(shlex.quote(a) for a in argv[3:])
    return shlex.join(argv)
