"""Fault injection: what breaks in a real lab, done to lab hosts and boards for real.

Hosts: ``link-down``/``link-up`` (the host's cable: its bridge-side veth),
``sshd-stop``/``sshd-start``, ``disk-fill``/``disk-free`` (its own work disk, /home/lab,
filled to 100 % with one allocated file), ``cpu-burn``/``cpu-idle`` (one niced busy loop
per core inside the host; CPU figures in /proc are the machine's, shared by all hosts),
``hang``/``resume`` (every process of the host stopped with SIGSTOP: TCP connects, nothing
answers), ``host-key-swap``/``host-key-restore`` (sshd given a freshly generated host key,
as a reinstall or someone in between would present, and reloaded with SIGHUP: open
sessions stay; the original key is kept aside and put back).  Boards: ``hang``/``resume``
(the machine's CPUs paused), ``overheat``/``cool`` (the temperature the board reports
jumps to 95 C / returns to 45 C).  ``clear`` undoes all.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from pathlib import Path

from labfleet.lab import boards, host as hostmod, netns, procs
from labfleet.lab.paths import LabPaths
from labfleet.lab.power import qemu_pid
from labfleet.lab.state import BoardState, HostState, LabState

HOST_FAULTS = {"link-down": "link-up", "sshd-stop": "sshd-start", "disk-fill": "disk-free",
               "cpu-burn": "cpu-idle", "hang": "resume", "host-key-swap": "host-key-restore"}
BOARD_FAULTS = {"hang": "resume", "overheat": "cool"}
CLEARS = {v: k for k, v in {**HOST_FAULTS, **BOARD_FAULTS}.items()}
ALL_ACTIONS = sorted({*HOST_FAULTS, *HOST_FAULTS.values(), *BOARD_FAULTS,
                      *BOARD_FAULTS.values(), "clear"})
FILL_FILE = "/home/lab/.labfleet-disk-fill"
FILL_SCRIPT = ('avail=$(df -B1 --output=avail /home/lab | tail -n 1); '
               'fallocate -l $((avail > 67108864 ? avail - 67108864 : 4096)) "$1" || true; '
               'dd if=/dev/zero of="$1.rest" bs=4k 2>/dev/null; sync; true')
HOT_MC, NORMAL_MC = 95000, 45000


class FaultError(ValueError):
    pass


def inject(lab: LabState, target: str, action: str, paths: LabPaths) -> str:
    """Apply action to a host or board; returns a one-line description of what was done."""
    if action not in ALL_ACTIONS:
        raise FaultError(f"unknown fault {action!r}; use one of: {', '.join(ALL_ACTIONS)}")
    if target in lab.boards:
        return _board(lab, lab.boards[target], action, paths)
    if target not in lab.hosts:
        names = ", ".join([*sorted(lab.hosts), *sorted(lab.boards)])
        raise FaultError(f"no lab host or board named {target!r}; there are: {names}")
    h = lab.hosts[target]
    if action == "clear":
        for fault in list(h.faults):
            clear(lab, h, fault, paths)
        return f"{h.name}: all faults cleared"
    if action in BOARD_FAULTS and action not in HOST_FAULTS:
        raise FaultError(f"{action} applies to boards, and {target} is a {h.role}")
    if action in HOST_FAULTS:
        _apply(h, action, paths)
        if action not in h.faults:
            h.faults.append(action)
        return f"{h.name}: {action}"
    fault = CLEARS[action]
    clear(lab, h, fault, paths)
    return f"{h.name}: {action}"


def _apply(h: HostState, fault: str, paths: LabPaths) -> None:
    if fault == "link-down":
        netns.set_link(h.veth, False)
    elif fault == "sshd-stop":
        procs.stop(h.pids.get("sshd"))
    elif fault == "disk-fill":
        # Allocate all but the metadata's margin at once, then write the rest for real.
        hostmod.run_in(h, ["sh", "-c", FILL_SCRIPT, "disk-fill", FILL_FILE])
    elif fault == "cpu-burn":
        if not any(procs.alive(p) for p in h.extra.get("burn", [])):
            assert h.holder_pid
            h.extra["burn"] = [
                procs.spawn(procs.in_host(h.holder_pid, ["nice", "-n", "19", "sh", "-c",
                                                          "while :; do :; done"]),
                            paths.host_dir(h.name) / "logs" / "cpu-burn.log")
                for _ in range(os.cpu_count() or 2)]
    elif fault == "hang":
        _signal_host(h, signal.SIGSTOP)
    elif fault == "host-key-swap":
        _swap_host_key(h, paths)


def _host_key_files(h: HostState, paths: LabPaths) -> tuple[Path, Path]:
    """The key sshd uses, and where the original is kept while swapped."""
    key = paths.host_dir(h.name) / "ssh" / "ssh_host_ed25519_key"
    return key, key.with_name(key.name + ".orig")


def _swap_host_key(h: HostState, paths: LabPaths) -> None:
    key, orig = _host_key_files(h, paths)
    if not orig.exists():  # swapped again: the original stays the one kept aside
        shutil.move(key, orig)
        shutil.move(key.with_name(key.name + ".pub"), orig.with_name(orig.name + ".pub"))
        h.extra["orig_host_key"] = [h.host_key, h.fingerprint]
    else:
        key.unlink(missing_ok=True)
        key.with_name(key.name + ".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{h.name}-swapped",
                    "-f", str(key)], check=True)
    _use_host_key(h, paths, key)


def _restore_host_key(h: HostState, paths: LabPaths) -> None:
    key, orig = _host_key_files(h, paths)
    if not orig.exists():
        return
    shutil.move(orig, key)
    shutil.move(orig.with_name(orig.name + ".pub"), key.with_name(key.name + ".pub"))
    h.extra.pop("orig_host_key", None)
    _use_host_key(h, paths, key)


def _use_host_key(h: HostState, paths: LabPaths, key: Path) -> None:
    """Record the key in the lab's state and make the host's sshd present it: SIGHUP
    (sshd re-executes itself and reads its key again; sessions open stay)."""
    pub = key.with_name(key.name + ".pub").read_text().split()
    h.host_key = f"{pub[0]} {pub[1]}"
    h.fingerprint = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                                    str(key) + ".pub"], capture_output=True, text=True,
                                   check=True).stdout.split()[1]
    pid = h.pids.get("sshd")
    if not procs.alive(pid):
        return  # sshd stopped (sshd-stop): it reads the new key when started
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.2)  # the old listening socket closes as sshd re-executes
    if not procs.wait_for(lambda: hostmod.listening(h, 22), 10):
        raise FaultError(f"{h.name}: sshd did not listen again after taking the new host key")


def _signal_host(h: HostState, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of the host's namespace.

    A process listed that has exited meanwhile (an SSH session ending, a busy loop just
    stopped) is skipped; one started meanwhile (forked by one not yet signalled) is found
    by listing again, until a listing brings nothing new.
    """
    done: set[int] = set()
    for _ in range(10):
        fresh = [pid for pid in netns.netns_pids(h.netns) if pid not in done]
        if not fresh:
            return
        for pid in fresh:
            done.add(pid)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def clear(lab: LabState, h: HostState, fault: str, paths: LabPaths) -> None:
    if fault == "link-down":
        netns.set_link(h.veth, True)
        # forget the failed ARP lookup, as plugging a cable back in makes a switch relearn
        netns.ip("neigh", "flush", "to", h.address, check=False)
    elif fault == "sshd-stop":
        hostmod.start_sshd(h, paths)
    elif fault == "disk-fill":
        if procs.alive(h.holder_pid):
            hostmod.run_in(h, ["rm", "-f", FILL_FILE, FILL_FILE + ".rest"], check=False)
    elif fault == "cpu-burn":
        for pid in h.extra.pop("burn", []):
            procs.stop(pid)
    elif fault == "hang":
        _signal_host(h, signal.SIGCONT)
    elif fault == "host-key-swap":
        _restore_host_key(h, paths)
    if fault in h.faults:
        h.faults.remove(fault)


def _board(lab: LabState, board: BoardState, action: str, paths: LabPaths) -> str:
    bdir = paths.board_dir(board.name)
    if action not in (*BOARD_FAULTS, *BOARD_FAULTS.values(), "clear"):
        raise FaultError(f"{action} applies to hosts; boards take: "
                         f"{', '.join(sorted({*BOARD_FAULTS, *BOARD_FAULTS.values(), 'clear'}))}")
    running = qemu_pid(bdir) is not None
    if action in ("overheat", "cool", "clear"):
        board.temperature_mc = HOT_MC if action == "overheat" else NORMAL_MC
        config = bdir / "board.json"
        import json
        data = json.loads(config.read_text())
        data["temperature_mc"] = board.temperature_mc
        config.write_text(json.dumps(data))
        if running:
            boards.send_temperature(bdir, board.temperature_mc)
    if action in ("hang", "resume", "clear"):
        if not running:
            if action == "hang":
                raise FaultError(f"{board.name} is off: power it on before hanging it")
        else:
            boards.qmp(bdir / "qmp.sock", "stop" if action == "hang" else "cont")
    return f"{board.name}: {action}"
