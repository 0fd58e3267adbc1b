"""The builder's pure parts: job states, allocation plans, remote commands, errors."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labfleet.builder.domain import remote_plan as plan
from labfleet.builder.domain.errors import first_error_line, step_failed
from labfleet.builder.domain.job import (
    Action,
    Attempt,
    AttemptOutcome,
    InvalidTransition,
    Job,
    plan_allocation,
    transition,
)
from labfleet.shared.events.build import BuildSpec, BuildStatus
from labfleet.shared.events.resource import Arch

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERVER = uuid.uuid4()


def attempt(n: int, allocation: int = 1, outcome: AttemptOutcome | None = None) -> Attempt:
    return Attempt(attempt=n, allocation=allocation, server_id=SERVER, server_name="bs",
                   started_at=T0, build_dir=f"/w/builds/x{n}", outcome=outcome)


def job(status: BuildStatus = BuildStatus.RUNNING, allocation: int = 1,
        attempts: tuple[Attempt, ...] = (), cancel: bool = False) -> Job:
    return Job(build_id=uuid.uuid4(), status=status, allocation=allocation, attempts=attempts,
               cancel_requested=cancel)


def test_transitions_refuse_leaving_a_terminal_state() -> None:
    assert transition(BuildStatus.QUEUED, BuildStatus.ALLOCATED) == BuildStatus.ALLOCATED
    assert transition(BuildStatus.RUNNING, BuildStatus.QUEUED) == BuildStatus.QUEUED  # lost
    with pytest.raises(InvalidTransition, match="succeeded to running"):
        transition(BuildStatus.SUCCEEDED, BuildStatus.RUNNING)
    with pytest.raises(InvalidTransition):
        transition(BuildStatus.CANCELLED, BuildStatus.FAILED)


def test_first_allocation_runs_attempt_one() -> None:
    p = plan_allocation(job(BuildStatus.QUEUED, allocation=0), 1, running_here=False,
                        max_attempts=3)
    assert p.action == Action.RUN and p.attempt == 1 and p.previous is None


def test_redelivery_after_a_crash_recovers_with_the_next_attempt() -> None:
    j = job(attempts=(attempt(1),))
    p = plan_allocation(j, 1, running_here=False, max_attempts=3)
    assert p.action == Action.RECOVER and p.attempt == 2 and p.previous == attempt(1)
    # …unless this very process is still running it (the ack merely expired)
    assert plan_allocation(j, 1, running_here=True, max_attempts=3).action == Action.IGNORE


def test_the_bound_gives_up_with_a_reason() -> None:
    j = job(attempts=(attempt(1, outcome=AttemptOutcome.INTERRUPTED),
                      attempt(2, outcome=AttemptOutcome.INTERRUPTED), attempt(3)))
    p = plan_allocation(j, 1, running_here=False, max_attempts=3)
    assert p.action == Action.GIVE_UP and p.previous == attempt(3)
    assert "interrupted 3 times" in p.reason


def test_attempts_of_an_earlier_allocation_do_not_count_against_the_bound() -> None:
    j = job(allocation=1, attempts=(attempt(1, outcome=AttemptOutcome.LOST),))
    p = plan_allocation(j, 2, running_here=False, max_attempts=1)
    assert p.action == Action.RUN and p.attempt == 2


def test_stale_terminal_and_cancelled() -> None:
    assert plan_allocation(job(allocation=2), 1, running_here=False,
                           max_attempts=3).action == Action.IGNORE
    assert plan_allocation(job(BuildStatus.SUCCEEDED), 1, running_here=False,
                           max_attempts=3).action == Action.IGNORE
    p = plan_allocation(job(attempts=(attempt(1),), cancel=True), 1, running_here=False,
                        max_attempts=3)
    assert p.action == Action.CANCEL and p.previous == attempt(1)


@given(st.lists(st.sampled_from([None, *AttemptOutcome]), max_size=6),
       st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_never_runs_past_the_bound_or_a_terminal_state(outcomes: list[AttemptOutcome | None],
                                                       allocation: int, bound: int,
                                                       here: bool) -> None:
    tries = tuple(attempt(i + 1, allocation, o) for i, o in enumerate(outcomes))
    j = job(allocation=allocation, attempts=tries)
    p = plan_allocation(j, allocation, running_here=here, max_attempts=bound)
    if p.action in (Action.RUN, Action.RECOVER):
        assert len(tries) < bound and p.attempt == len(tries) + 1
        assert (p.previous is not None) == (p.action == Action.RECOVER)


# ---- remote commands --------------------------------------------------------------------


def spec(**kw: object) -> BuildSpec:
    return BuildSpec(repo_url="https://git.example.org/linux.git", **kw)  # type: ignore[arg-type]


def test_kernel_builds_get_arch_and_cross_compile() -> None:
    ws = plan.Workspace("/home/b/labfleet", uuid.UUID(int=1))
    s = spec(arch=Arch.RISCV64, config="defconfig", config_fragments=["kernel/configs/kvm_guest.config"],
             make_targets=["Image"])
    assert plan.compile_step(ws, s, "riscv64-linux-gnu-", 8) == [
        "make", "-C", f"{ws.build_dir}/src", "-j8", "ARCH=riscv", "CROSS_COMPILE=riscv64-linux-gnu-",
        "Image"]
    configure = plan.configure_step(ws, s, "riscv64-linux-gnu-")
    assert configure is not None
    assert configure[3:] == ["configure", ws.src, "defconfig", "1", "kernel/configs/kvm_guest.config",
                             "ARCH=riscv", "CROSS_COMPILE=riscv64-linux-gnu-"]
    native = spec(arch=Arch.X86_64, config="tinyconfig")
    assert plan.toolchain_variables(native, "") == ["ARCH=x86_64"]
    assert plan.configure_step(ws, spec(arch=Arch.X86_64), "") is None


def test_plain_builds_get_cc_only_when_cross() -> None:
    assert plan.toolchain_variables(spec(arch=Arch.X86_64), "") == []
    assert plan.toolchain_variables(spec(arch=Arch.ARM64), "aarch64-linux-gnu-") == [
        "CROSS_COMPILE=aarch64-linux-gnu-", "CC=aarch64-linux-gnu-gcc"]


def test_spec_values_travel_as_arguments_never_as_shell_text() -> None:
    ws = plan.Workspace("/w", uuid.UUID(int=2))
    url = "https://x.org/a b;rm -rf ~.git"
    argv = plan.fetch_step(ws, url)
    assert argv[:2] == ["sh", "-c"] and url not in argv[2] and argv[4] == url
    assert ws.mirror(url) == ws.mirror(url) and ws.mirror(url) != ws.mirror(url + "x")
    assert plan.rev_parse(ws, url, "v6.1")[-1] == "v6.1^{commit}"


def test_spec_refuses_option_like_and_escaping_values() -> None:
    with pytest.raises(ValueError, match="must not start with '-'"):
        spec(arch=Arch.X86_64, ref="--upload-pack=evil")
    with pytest.raises(ValueError, match="relative to the source tree"):
        spec(arch=Arch.X86_64, artifacts=["../../etc/passwd"])
    with pytest.raises(ValueError, match="plain name"):
        spec(arch=Arch.X86_64, make_targets=["-j1000"])


def test_compile_failure_quotes_the_compilers_message() -> None:
    tail = ["[labfleet] compile: make -C /w/builds/test_error_dir/src",
            "cc -o hello main.c",
            "main.c:1:25: error: 'x' undeclared (first use in this function)",
            "make: *** [Makefile:3: hello] Error 1"]
    err = step_failed("compile", 2, tail)
    assert err.code == "compile_failed" and not err.retryable
    assert err.message == ("make exited with status 2: main.c:1:25: error: 'x' undeclared "
                           "(first use in this function)")
    assert err.details["log_tail"] == tail
    assert first_error_line(["all good"]) is None
    assert step_failed("fetch", None, ["fatal: repository 'x' does not exist"]).message == (
        "fetching the repository failed (was killed): fatal: repository 'x' does not exist")
