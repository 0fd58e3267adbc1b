"""Git repositories for build tests, prepared once and served inside the lab.

- ``hello.git``: a small C program whose Makefile honours ``CROSS_COMPILE`` (and writes
  ``hello`` plus ``hello.sha256``), for quick builds on every architecture;
- ``linux.git``: the Debian linux-source tree as one commit, for real kernel builds
  (prepared on demand: ``labfleet lab images --kernel-git``; it takes minutes once).

``git daemon`` serves the cache's ``git/`` directory on the lab bridge address, so
every lab host and the services reach ``git://<gateway>/hello.git``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from labfleet.lab import procs
from labfleet.lab.images import cache_lock, source_tree
from labfleet.lab.paths import LabPaths
from labfleet.lab.state import LabState

REPOS = ["hello.git", "linux.git"]
GIT_ENV = {"GIT_AUTHOR_NAME": "labfleet lab", "GIT_AUTHOR_EMAIL": "lab@labfleet.invalid",
           "GIT_COMMITTER_NAME": "labfleet lab", "GIT_COMMITTER_EMAIL": "lab@labfleet.invalid",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}

HELLO_C = """\
#include <stdio.h>

int main(void)
{
    printf("hello from labfleet (%s)\\n", ARCH_NAME);
    return 0;
}
"""
HELLO_MAKEFILE = """\
CC = $(CROSS_COMPILE)gcc
ARCH_NAME ?= $(if $(CROSS_COMPILE),$(CROSS_COMPILE),native)

all: hello hello.sha256

hello: hello.c
\t$(CC) -O2 -DARCH_NAME='"$(ARCH_NAME)"' -o $@ $<

hello.sha256: hello
\tsha256sum hello > $@

clean:
\trm -f hello hello.sha256

.PHONY: all clean
"""


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **GIT_ENV})


def ensure_hello(paths: LabPaths) -> Path:
    with cache_lock(paths, "git-hello"):
        return _ensure_hello(paths)


def _ensure_hello(paths: LabPaths) -> Path:
    repo = paths.cache_dir / "git" / "hello.git"
    if (repo / "HEAD").exists():
        return repo
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "hello.c").write_text(HELLO_C)
        (work / "Makefile").write_text(HELLO_MAKEFILE)
        _git("init", "-q", "-b", "main", cwd=work)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "hello: a C program for build tests", cwd=work)
        repo.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "-q", "--bare", str(work), str(repo))
    (repo / "git-daemon-export-ok").touch()
    return repo


def ensure_linux(paths: LabPaths, say: Callable[[str], None]) -> Path:
    """One commit of the unpacked linux-source tree, as a bare repository."""
    with cache_lock(paths, "git-linux"):
        return _ensure_linux(paths, say)


def _ensure_linux(paths: LabPaths, say: Callable[[str], None]) -> Path:
    repo = paths.cache_dir / "git" / "linux.git"
    done = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "-q", "--verify",
                           "refs/heads/main"], capture_output=True)
    if (repo / "HEAD").exists() and done.returncode == 0:
        return repo
    tree = source_tree(paths, say)
    say(f"making the kernel git mirror {repo} (once; a few minutes)")
    shutil.rmtree(repo, ignore_errors=True)
    repo.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", "--bare", "-b", "main", str(repo))
    env = {**os.environ, **GIT_ENV, "GIT_DIR": str(repo), "GIT_WORK_TREE": str(tree),
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "gc.auto", "GIT_CONFIG_VALUE_0": "0"}
    # -f: the Debian tree ships a .gitignore that ignores everything at its top
    for argv in (["git", "add", "-A", "-f", "."],
                 ["git", "commit", "-q", "-m", f"{tree.name} from Debian's linux-source"]):
        subprocess.run(argv, cwd=tree, env=env, check=True, capture_output=True)
    (repo / "index").unlink(missing_ok=True)
    # one pack without delta search: quick to make, and a clone streams it as it is
    subprocess.run(["git", "--git-dir", str(repo), "repack", "-a", "-d", "-q", "--window=0"],
                   check=True, capture_output=True)
    (repo / "git-daemon-export-ok").touch()
    return repo


def serve(lab: LabState, paths: LabPaths, say: Callable[[str], None]) -> str:
    """Start git daemon on the bridge address (once) and return the base URL."""
    ensure_hello(paths)
    url = f"git://{lab.gateway}/"
    if procs.alive(lab.git_daemon_pid):
        return url
    base = paths.cache_dir / "git"
    lab.git_daemon_pid = procs.spawn(
        ["git", "daemon", "--reuseaddr", f"--listen={lab.gateway}", f"--base-path={base}",
         "--export-all", "--informative-errors", str(base)],
        paths.lab_dir / "logs" / "git-daemon.log")
    return url
