"""Bringing the whole lab up and down, and describing it.

``up`` is idempotent: it creates what is missing, restarts daemons that died, clears
injected faults, and removes hosts and boards beyond the requested counts.  ``down``
removes exactly what the state file lists.  ``status`` is what a user types into
labfleet's registration forms.
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labfleet.lab import gitrepos, host as hostmod, netns, procs, qemu_host, station
from labfleet.lab.images import ARCHES, build_all
from labfleet.lab.kvm import kvm_works
from labfleet.lab.paths import LabPaths
from labfleet.lab.state import BoardState, HostState, LabState

Say = Callable[[str], None]
FORBIDDEN_LAB_PARENTS = ("/tmp", "/run", "/home", "/usr", "/etc")
BOARD_ARCHES = ("arm64", "riscv64", "x86_64")
POWER_METHODS = ("pdu", "usb-hub", "gpio-relay")
DEFAULT_MISSING_TOOLCHAINS = {"build2": ["riscv64"]}


class LabError(RuntimeError):
    """A lab operation that cannot go on; the message says what to do."""


@dataclass
class LabSpec:
    build_servers: int = 2
    qemu_hosts: int = 2
    boards: int = 3
    build_disk_mb: int = 8192
    qemu_disk_mb: int = 4096
    station_disk_mb: int = 2048
    # Cross toolchains a build server lacks (by host name): aarch64, riscv64, arm.
    missing_toolchains: dict[str, list[str]] = field(
        default_factory=lambda: dict(DEFAULT_MISSING_TOOLCHAINS))

    def validate(self) -> None:
        for label, n, top in (("--build-servers", self.build_servers, 29),
                              ("--qemu-hosts", self.qemu_hosts, 29), ("--boards", self.boards, 30)):
            if not 0 <= n <= top:
                raise LabError(f"{label} must be between 0 and {top}, not {n}")


@contextmanager
def _locked(paths: LabPaths) -> Iterator[None]:
    paths.lab_dir.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_lab_dir(paths: LabPaths) -> None:
    for parent in FORBIDDEN_LAB_PARENTS:
        if paths.lab_dir == Path(parent) or str(paths.lab_dir).startswith(parent + "/"):
            raise LabError(f"lab directory {paths.lab_dir} is under {parent}, which every lab "
                           "host mounts privately; set LABFLEET_LAB_DIR to a path under /var "
                           "or /srv")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network and mount namespaces, bridges, loop "
                       "devices); run `labfleet lab` as root")


def _lab_id(paths: LabPaths) -> str:
    return hashlib.sha1(str(paths.lab_dir).encode()).hexdigest()[:4]


def _bridge(lab_id: str) -> str:
    return f"lfbr{lab_id}"


def _new_state(paths: LabPaths) -> LabState:
    lab_id = _lab_id(paths)
    taken = set()
    for other in Path("/var/lib").glob("labfleet-lab*/state.json"):
        if other.parent != paths.lab_dir and (o := LabState.load(other)):
            taken.add(o.subnet)
    subnet = netns.pick_subnet(taken)
    keys = paths.lab_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    user_key = keys / "id_ed25519"
    if not user_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labfleet-lab",
                        "-f", str(user_key)], check=True)
    password = keys / "password"
    if not password.exists():
        password.write_text(secrets.token_urlsafe(12) + "\n")
        os.chmod(password, 0o600)
    return LabState(lab_id=lab_id, subnet=str(subnet), bridge=_bridge(lab_id),
                    gateway=str(subnet.network_address + 1), user_key=str(user_key),
                    password_file=str(password), known_hosts=str(paths.lab_dir / "known_hosts"))


def _address(lab: LabState, offset: int) -> str:
    return str(ipaddress.ip_network(lab.subnet).network_address + offset)


def _desired_hosts(lab: LabState, spec: LabSpec) -> list[HostState]:
    uid = next(iter(lab.hosts.values())).uid if lab.hosts else hostmod.free_uid()
    wanted: list[HostState] = []
    for role, count, base, short, disk in (
            ("build-server", spec.build_servers, 10, "b", spec.build_disk_mb),
            ("qemu-host", spec.qemu_hosts, 40, "q", spec.qemu_disk_mb),
            ("flash-station", 1, 70, "s", spec.station_disk_mb)):
        name_base = {"build-server": "build", "qemu-host": "qemu",
                     "flash-station": "station"}[role]
        for i in range(1, count + 1):
            name = f"{name_base}{i}"
            toolchains = ["gcc", "aarch64", "riscv64", "arm"] if role == "build-server" else []
            toolchains = [t for t in toolchains if t not in spec.missing_toolchains.get(name, [])]
            wanted.append(HostState(
                name=name, role=role, address=_address(lab, base + i),
                netns=f"lf{lab.lab_id}-{name}", veth=f"lf{lab.lab_id}{short}{i}", uid=uid,
                disk_mb=disk, toolchains=toolchains))
    return wanted


def _desired_boards(lab: LabState, spec: LabSpec, station_name: str) -> list[BoardState]:
    boards = []
    for i in range(1, spec.boards + 1):
        arch = BOARD_ARCHES[(i - 1) % len(BOARD_ARCHES)]
        method = POWER_METHODS[(i - 1) % len(POWER_METHODS)]
        boards.append(BoardState(
            name=f"board{i}-{arch}", arch=arch, station=station_name, power_method=method,
            power=station.power_parameters(method, i), console_raw_port=4000 + i,
            console_rfc2217_port=4100 + i))
    return boards


def _password_hash(lab: LabState) -> str:
    password = Path(lab.password_file).read_text().strip()
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                          capture_output=True, text=True, check=True).stdout.strip()


def load(paths: LabPaths | None = None) -> LabState | None:
    return LabState.load((paths or LabPaths.from_env()).state_file)


def up(spec: LabSpec | None = None, paths: LabPaths | None = None, say: Say = print) -> LabState:
    spec = spec or LabSpec()
    spec.validate()
    paths = paths or LabPaths.from_env()
    _check_lab_dir(paths)
    with _locked(paths):
        started = time.monotonic()
        lab = LabState.load(paths.state_file) or _new_state(paths)
        needed = {"x86_64", *(BOARD_ARCHES[i % len(BOARD_ARCHES)] for i in range(spec.boards))}
        images = build_all(paths, say, sorted(needed))
        lab.images = {k: v.to_json() for k, v in images.items()}
        lab.kvm = kvm_works(images["x86_64"], paths)
        netns.ensure_bridge(lab.bridge, lab.gateway, int(lab.subnet.split("/")[1]))
        lab.save(paths.state_file)
        wanted = _desired_hosts(lab, spec)
        wanted_names = {h.name for h in wanted}
        for name in [n for n in lab.hosts if n not in wanted_names]:
            _remove_host(lab, lab.hosts.pop(name), paths)
        if spec.qemu_hosts:
            _make_mountpoints(paths)
        password_hash = _password_hash(lab)
        for desired in wanted:
            current = lab.hosts.get(desired.name)
            if current:  # keep pids and keys, take the new configuration
                current.toolchains, current.disk_mb = desired.toolchains, desired.disk_mb
            h = lab.hosts.setdefault(desired.name, desired)
            _bring_up_host(lab, h, paths, password_hash)
            lab.save(paths.state_file)
        stations = lab.by_role("flash-station")
        wanted_boards = _desired_boards(lab, spec, stations[0].name)
        for name in [n for n in lab.boards if n not in {b.name for b in wanted_boards}]:
            station.remove_board(lab, lab.boards.pop(name), paths)
        for board in wanted_boards:
            lab.boards.setdefault(board.name, board)
        station.start(lab, stations[0], paths, images)
        lab.git_url = gitrepos.serve(lab, paths, say)
        _write_known_hosts(lab)
        lab.save(paths.state_file)
        say(f"lab up in {time.monotonic() - started:.1f} s: {len(lab.hosts)} hosts, "
            f"{len(lab.boards)} boards on {lab.subnet}")
        return lab


def _bring_up_host(lab: LabState, h: HostState, paths: LabPaths, password_hash: str) -> None:
    for fault in list(h.faults):
        from labfleet.lab import faults
        faults.clear(lab, h, fault, paths)
    hostmod.prepare(lab, h, paths, password_hash)
    mounts = qemu_host.holder_mounts(h, paths) if h.role == "qemu-host" else []
    if h.role == "flash-station":
        mounts = station.holder_mounts(lab, h, paths)
    hostmod.start_holder(lab, h, paths, mounts)
    netns.set_link(h.veth, True)
    hostmod.start_sshd(h, paths)
    if h.role == "qemu-host":
        qemu_host.start(h, paths)


def _write_known_hosts(lab: LabState) -> None:
    known = Path(lab.known_hosts)
    known.write_text("".join(f"{h.address} {h.host_key}\n" for h in lab.hosts.values()))
    # For OpenSSH-based clients (libvirt's qemu+ssh runs `ssh`): the lab's key, the pinned
    # host keys, and strict checking.  `ssh -F <lab dir>/ssh_config lab@10.231.x.y`.
    config = known.parent / "ssh_config"
    config.write_text(f"Host *\n  User lab\n  IdentityFile {lab.user_key}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
                      "  BatchMode yes\n  ConnectTimeout 10\n")
    wrapper = known.parent / "bin" / "ssh"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nexec ssh -F {config} \"$@\"\n")
    wrapper.chmod(0o755)


def _remove_host(lab: LabState, h: HostState, paths: LabPaths) -> None:
    hostmod.stop_all(h)
    netns.delete_link(h.veth)
    netns.delete_netns(h.netns)
    shutil.rmtree(paths.host_dir(h.name), ignore_errors=True)


def down(paths: LabPaths | None = None, say: Say = print) -> bool:
    """Remove everything the lab created.  Returns False if there was no lab."""
    paths = paths or LabPaths.from_env()
    lab = LabState.load(paths.state_file)
    if lab is None:
        return _remove_unfinished(paths, say)
    with _locked(paths):
        for board in list(lab.boards.values()):
            station.remove_board(lab, board, paths)
        for h in list(lab.hosts.values()):
            _remove_host(lab, h, paths)
        procs.stop(lab.git_daemon_pid)
        netns.delete_link(lab.bridge)
        _remove_mountpoints(paths)
    shutil.rmtree(paths.lab_dir, ignore_errors=True)
    say(f"lab in {paths.lab_dir} removed")
    return True


#: what ``up`` has made in the lab directory before it first records the lab
_BEFORE_STATE = {".lock", "keys"}


def _remove_unfinished(paths: LabPaths, say: Say) -> bool:
    """Remove a lab whose ``up`` was stopped before it recorded anything (killed while
    building its kernels): its keys, and its bridge if it got that far."""
    made = {p.name for p in paths.lab_dir.iterdir()} if paths.lab_dir.is_dir() else set()
    if not made or made - _BEFORE_STATE:
        say(f"no lab in {paths.lab_dir}")
        return False
    with _locked(paths):  # an up still running holds it
        recorded = LabState.load(paths.state_file) is not None
        if not recorded:
            netns.delete_link(_bridge(_lab_id(paths)))  # if up got as far as making it
    if recorded:  # that up finished meanwhile: a whole lab to take down
        return down(paths, say)
    shutil.rmtree(paths.lab_dir, ignore_errors=True)
    say(f"removed the unfinished lab in {paths.lab_dir} (its up stopped before the lab "
        "was recorded)")
    return True


def _other_labs(paths: LabPaths) -> list[Path]:
    return [p.parent for p in Path("/var/lib").glob("labfleet-lab*/state.json")
            if p.parent != paths.lab_dir]


def _make_mountpoints(paths: LabPaths) -> None:
    """Create the root-filesystem directories QEMU hosts mount over, recording them in the
    cache (shared by every lab on this machine) so the last lab down removes them."""
    record = paths.cache_dir / "created-mountpoints"
    created = set(record.read_text().split()) if record.exists() else set()
    for missing in qemu_host.mountpoints_needed():
        Path(missing).mkdir(parents=True)
        created.add(missing)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("".join(f"{d}\n" for d in sorted(created)))


def _remove_mountpoints(paths: LabPaths) -> None:
    # Removing a directory that another lab's hosts mount over would detach their mounts
    # (the kernel allows rmdir of a mount point of another namespace), so only the last
    # lab on the machine removes them.
    record = paths.cache_dir / "created-mountpoints"
    if not record.exists() or _other_labs(paths):
        return
    for d in sorted(record.read_text().split(), reverse=True):
        # a mount point stays busy until the kernel has torn its namespace down
        procs.wait_for(lambda d=d: _rmdir(Path(d)), 5, 0.1)
    record.unlink()


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def status(paths: LabPaths | None = None) -> dict[str, Any]:
    paths = paths or LabPaths.from_env()
    lab = LabState.load(paths.state_file)
    if lab is None:
        return {"up": False, "lab_dir": str(paths.lab_dir), "hosts": [], "boards": []}
    hosts = []
    for h in lab.hosts.values():
        entry: dict[str, Any] = {
            "name": h.name, "role": h.role, "address": h.address, "ssh_port": h.ssh_port,
            "user": h.user, "key_path": lab.user_key, "password_file": lab.password_file,
            "host_key": h.host_key, "fingerprint": h.fingerprint,
            "ssh_up": procs.alive(h.pids.get("sshd")), "link_up": netns.link_is_up(h.veth),
            "disk_mb": h.disk_mb, "faults": h.faults,
        }
        if h.role == "build-server":
            entry["toolchains"] = h.toolchains
        if h.role == "qemu-host":
            entry["libvirt_uri"] = f"qemu+ssh://{h.user}@{h.address}/system"
            # the same, through the lab's ssh wrapper (its key, pinned host keys)
            entry["libvirt_uri_lab"] = (f"qemu+ssh://{h.user}@{h.address}/system"
                                        f"?command={paths.lab_dir}/bin/ssh")
            entry["kvm"] = lab.kvm
        if h.role == "flash-station":
            entry.update(station.public_info(lab, h))
        hosts.append(entry)
    boards = [station.board_info(lab, b, paths) for b in lab.boards.values()]
    return {"up": True, "lab_dir": str(paths.lab_dir), "subnet": lab.subnet,
            "gateway": lab.gateway, "known_hosts": lab.known_hosts, "kvm": lab.kvm,
            "ssh_config": str(paths.lab_dir / "ssh_config"),
            "git": {"url": lab.git_url, "repos": gitrepos.REPOS},
            "arches": list(ARCHES), "hosts": hosts, "boards": boards}
