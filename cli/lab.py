"""``labfleet lab ...``: the emulated lab (see ``labfleet.lab``).

up, down, status, images, fault, power, register, sim.  All but ``status`` and ``sim``
need root.  ``LABFLEET_LAB_DIR`` selects the lab (default ``/var/lib/labfleet-lab``).
"""
from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(name="lab", help="The emulated lab: real hosts, VMs and boards on this machine.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="lab")


def _fail(message: str) -> None:
    typer.echo(f"labfleet lab: {message}", err=True)
    raise typer.Exit(1)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _missing_toolchains(values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        name, sep, arches = value.partition("=")
        if not sep or not name or not arches:
            _fail(f"--without {value!r}: write HOST=ARCH[,ARCH], e.g. build2=riscv64")
        out[name] = [a for a in arches.split(",") if a]
    return out


@app.command()
def up(
    build_servers: Annotated[int, typer.Option(help="build servers (build1..N)")] = 2,
    qemu_hosts: Annotated[int, typer.Option(help="QEMU hosts with libvirtd (qemu1..N)")] = 2,
    boards: Annotated[int, typer.Option(help="boards on the flash station (arm64, riscv64, "
                                              "x86_64 in turn)")] = 3,
    without: Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
        help="cross toolchains a build server lacks, HOST=ARCH[,ARCH] (aarch64, riscv64, "
             "arm); default build2=riscv64")] = None,
) -> None:
    """Bring the lab up (idempotent) and print its status as JSON."""
    from labfleet.lab import lab
    from labfleet.lab.images import ImageBuildError
    from labfleet.lab.procs import DaemonError

    spec = lab.LabSpec(build_servers=build_servers, qemu_hosts=qemu_hosts, boards=boards)
    if without is not None:
        spec.missing_toolchains = _missing_toolchains(without)
    try:
        lab.up(spec, say=_say)
    except (lab.LabError, ImageBuildError, DaemonError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(lab.status(), indent=2))


@app.command()
def down() -> None:
    """Remove everything the lab created (namespaces, daemons, VMs, mounts, files)."""
    import os

    from labfleet.lab import lab

    if os.geteuid() != 0:
        _fail("the lab needs root to remove namespaces, links and mounts; run it as root")
    lab.down(say=_say)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Every host's role, address, SSH port, user, key and host key; every board's console,
    power and flash station."""
    from labfleet.lab import lab

    try:
        info = lab.status()
    except PermissionError as exc:
        _fail(f"cannot read the lab's state ({exc.filename}): it holds credentials and is "
              "readable by root only; run as root")
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    if not info["up"]:
        typer.echo(f"no lab in {info['lab_dir']} (labfleet lab up)")
        return
    for h in info["hosts"]:
        typer.echo(f"{h['name']:10} {h['role']:14} {h['user']}@{h['address']}:{h['ssh_port']}  "
                   f"{h['fingerprint']}  ssh {'up' if h['ssh_up'] else 'DOWN'}"
                   f"{'  faults: ' + ','.join(h['faults']) if h['faults'] else ''}")
    for b in info["boards"]:
        typer.echo(f"{b['name']:16} {b['arch']:8} console {b['console']['raw_url']}  power "
                   f"{b['power']['method']}  {b['power_state']}  on {b['flash_station']}")


@app.command()
def images(
    arch: Annotated[Optional[list[str]], typer.Option(help="only these (x86_64, arm64, riscv64)")] = None,  # noqa: UP007
    kernel_git: Annotated[bool, typer.Option(help="also make the kernel source git mirror")] = True,
) -> None:
    """Build (or find cached) the lab kernels, boot images and git repositories."""
    from labfleet.lab import gitrepos
    from labfleet.lab.images import ImageBuildError, build_all
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env()
    try:
        built = build_all(paths, _say, arch)
        gitrepos.ensure_hello(paths)
        if kernel_git:
            gitrepos.ensure_linux(paths, _say)
    except ImageBuildError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({k: v.to_json() for k, v in built.items()}, indent=2))


@app.command()
def fault(target: Annotated[str, typer.Argument(help="host or board name")],
          action: Annotated[str, typer.Argument(help="link-down|link-up|sshd-stop|sshd-start|"
                                                     "disk-fill|disk-free|cpu-burn|cpu-idle|hang|"
                                                     "resume|overheat|cool|clear")]) -> None:
    """Inject or clear a fault on a lab host or board."""
    from labfleet.lab import faults, lab
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env()
    state = lab.load(paths)
    if state is None:
        _fail(f"no lab in {paths.lab_dir}: run `labfleet lab up` first")
    try:
        typer.echo(faults.inject(state, target, action, paths))  # type: ignore[arg-type]
    except faults.FaultError as exc:
        _fail(str(exc))
    state.save(paths.state_file)  # type: ignore[union-attr]


@app.command()
def power(board: str, action: Annotated[str, typer.Argument(help="on|off|cycle|state")]) -> None:
    """Switch a board through its power method's real tool on the flash station."""
    from labfleet.lab import lab, station
    from labfleet.lab.paths import LabPaths

    paths = LabPaths.from_env()
    state = lab.load(paths)
    if state is None:
        _fail(f"no lab in {paths.lab_dir}: run `labfleet lab up` first")
    try:
        typer.echo(station.switch(state, state.board(board), action, paths))  # type: ignore[union-attr]
    except (KeyError, ValueError, RuntimeError) as exc:
        _fail(str(exc).strip("'\""))


@app.command("register")
def register_lab(
    url: Annotated[str, typer.Option(help="labfleet gateway base URL")] = "http://127.0.0.1:8080",
    token: Annotated[str, typer.Option(envvar="LABFLEET_TOKEN", help="API bearer token")] = "",
) -> None:
    """Register every lab host and board with a running labfleet through its API."""
    from labfleet.lab.api import RegistrationError, register_all

    if not token:
        _fail("an API token is needed: --token or LABFLEET_TOKEN")
    try:
        for line in register_all(url, token):
            typer.echo(line)
    except RegistrationError as exc:
        _fail(str(exc))


@app.command()
def sim(
    hosts: Annotated[int, typer.Option(help="simulated SSH hosts")] = 2000,
    processes: Annotated[int, typer.Option(help="server processes (0: one per 500 hosts)")] = 0,
    base_port: Annotated[int, typer.Option(help="first port on 127.0.0.1")] = 22000,
    out: Annotated[Optional[str], typer.Option(help="write the hosts list (JSON) here")] = None,  # noqa: UP007
) -> None:
    """Serve thousands of simulated SSH hosts on loopback for scale tests (Ctrl-C stops)."""
    from labfleet.lab.sim import run_sim_cli

    sys.exit(run_sim_cli(hosts, processes, base_port, out))
