"""A finished build's checkout is kept, cleaned, and taken over by the next build of the
repository: the builder's fetch, checkout and cleanup scripts run here with sh and git on
a real repository, exactly as on a build server."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from labfleet.builder.domain import remote_plan as plan

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=GIT_ENV).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=GIT_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / ".gitignore").write_text("*.o\n")
    commit(repo, {"main.c": "int main(void) { return 0; }\n", "Makefile": "all:\n"}, "first")
    return repo


def build(root: Path, url: str, commit_: str) -> tuple[plan.Workspace, str]:
    """What a build does with its tree: prepare, fetch, checkout."""
    ws = plan.Workspace(str(root), uuid.uuid4())
    run(plan.prepare(ws))
    run(plan.fetch_step(ws, url))
    return ws, run(plan.checkout_step(ws, url, commit_))


def test_the_next_build_takes_over_the_cleaned_tree_at_its_own_commit(origin: Path,
                                                                      tmp_path: Path) -> None:
    url, root = f"file://{origin}", tmp_path / "work"
    first_commit = git(origin, "rev-parse", "HEAD")
    ws1, out = build(root, url, first_commit)
    assert "reused" not in out
    src1 = Path(ws1.src)
    # what a build leaves behind: outputs (ignored and not), an edited tracked file, a hook
    (src1 / "main.o").write_text("object")
    (src1 / "generated.h").write_text("#define X 1\n")
    (src1 / "sub").mkdir()
    (src1 / "sub" / "out.bin").write_text("x")
    (src1 / "main.c").write_text("edited by the build\n")
    hook = src1 / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {tmp_path}/hook-ran\n")
    hook.chmod(0o755)
    run(plan.cleanup(ws1, url))
    assert not Path(ws1.build_dir).exists()
    kept = Path(ws1.spare_trees(url)) / str(ws1.build_id)
    assert kept.is_dir() and not (kept / "main.o").exists()

    second_commit = commit(origin, {"main.c": "int main(void) { return 1; }\n",
                                    "new.c": "int x;\n"}, "second")
    ws2, out = build(root, url, second_commit)
    assert f"reused the tree of build {ws1.build_id}" in out
    src2 = Path(ws2.src)
    assert git(src2, "rev-parse", "HEAD") == second_commit
    # exactly the commit's files, as a fresh checkout would have them
    assert git(src2, "status", "--porcelain", "--ignored") == ""
    assert sorted(p.name for p in src2.iterdir() if p.name != ".git") == [
        ".gitignore", "Makefile", "main.c", "new.c"]
    assert (src2 / "main.c").read_text() == "int main(void) { return 1; }\n"
    assert not (tmp_path / "hook-ran").exists()
    assert not kept.exists() and list(Path(ws1.spare_trees(url)).iterdir()) == []


def test_only_keep_trees_are_kept_and_zero_keeps_none(origin: Path, tmp_path: Path) -> None:
    url, root = f"file://{origin}", tmp_path / "work"
    head = git(origin, "rev-parse", "HEAD")
    ws1, _ = build(root, url, head)
    ws2, out = build(root, url, head)  # both running at once: two fresh checkouts
    assert "reused" not in out
    run(plan.cleanup(ws1, url, keep_trees=1))
    run(plan.cleanup(ws2, url, keep_trees=1))
    spares = Path(ws1.spare_trees(url))
    assert [p.name for p in spares.iterdir()] == [str(ws1.build_id)]
    assert not Path(ws2.build_dir).exists()

    ws3, out = build(root, url, head)
    assert "reused" in out
    run(plan.cleanup(ws3, url, keep_trees=0))
    assert list(spares.iterdir()) == [] and not Path(ws3.build_dir).exists()
    # another repository's builds do not see this one's trees
    assert plan.Workspace(str(root), ws1.build_id).spare_trees(url + "x") != str(spares)


def test_an_unusable_kept_tree_is_replaced_by_a_fresh_checkout(origin: Path,
                                                               tmp_path: Path) -> None:
    url, root = f"file://{origin}", tmp_path / "work"
    head = git(origin, "rev-parse", "HEAD")
    ws1, _ = build(root, url, head)
    run(plan.cleanup(ws1, url))
    kept = Path(ws1.spare_trees(url)) / str(ws1.build_id)
    (kept / ".git" / "index.lock").write_text("")  # a git killed in the middle
    ws2, out = build(root, url, head)
    assert "not usable; checking out afresh" in out
    assert git(Path(ws2.src), "rev-parse", "HEAD") == head
    assert git(Path(ws2.src), "status", "--porcelain", "--ignored") == ""
    assert not kept.exists()


def test_a_failed_checkout_still_fails(origin: Path, tmp_path: Path) -> None:
    url, root = f"file://{origin}", tmp_path / "work"
    head = git(origin, "rev-parse", "HEAD")
    ws1, _ = build(root, url, head)
    run(plan.cleanup(ws1, url))
    ws2 = plan.Workspace(str(root), uuid.uuid4())
    run(plan.prepare(ws2))
    done = subprocess.run(plan.checkout_step(ws2, url, "0" * 40), capture_output=True,
                          text=True, env=GIT_ENV)
    assert done.returncode != 0
