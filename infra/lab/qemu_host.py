"""The QEMU host role: virtlogd and libvirtd running inside the host's namespaces.

Debian 12 has no modular ``virtqemud``; ``libvirtd -d`` runs without systemd once
``virtlogd`` runs.  Each QEMU host has its own ``/etc/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt`` and ``/var/log/libvirt`` (bind-mounted from its host directory)
and its own ``/run``, so hosts never see each other's domains.  The lab user reaches
``qemu:///system`` through the socket (no polkit here), so a client uses
``qemu+ssh://lab@<address>/system``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from labfleet.lab import procs
from labfleet.lab.host import run_in
from labfleet.lab.paths import LabPaths
from labfleet.lab.state import HostState

LIBVIRT_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt",
                "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0777"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
"""


def mountpoints_needed() -> list[str]:
    """Root-filesystem directories the bind mounts need (libvirt-daemon-system makes them)."""
    return [d for d in LIBVIRT_DIRS.values() if not Path(d).exists()]


def holder_mounts(host: HostState, paths: LabPaths) -> list[str]:
    hdir = paths.host_dir(host.name) / "libvirt"
    specs: list[str] = []
    for sub, target in LIBVIRT_DIRS.items():
        (hdir / sub).mkdir(parents=True, exist_ok=True)
        specs += ["bind", str(hdir / sub), target]
    # QEMU capability probing takes ~10 s per emulator; every host runs the same binaries,
    # so they share one probe cache (libvirt revalidates it against the binaries' ctimes).
    caps = paths.cache_dir / "libvirt-qemu-capabilities"
    caps.mkdir(parents=True, exist_ok=True)
    (hdir / "cache" / "qemu" / "capabilities").mkdir(parents=True, exist_ok=True)
    specs += ["bind", str(caps), "/var/cache/libvirt/qemu/capabilities"]
    etc = hdir / "etc"
    (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    (etc / "qemu.conf").write_text(QEMU_CONF)
    (etc / "virtlogd.conf").write_text('log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
    (etc / "libvirt.conf").write_text("")
    for name in ("qemu", "storage", "nwfilter", "secrets"):
        (etc / name).mkdir(exist_ok=True)
    return specs


def start(host: HostState, paths: LabPaths) -> None:
    hdir = paths.host_dir(host.name)
    run = hdir / "run"
    assert host.holder_pid
    for daemon, argv in (("virtlogd", ["virtlogd", "-d", "-p", str(run / "virtlogd.pid")]),
                         ("libvirtd", ["libvirtd", "-d", "-p", str(run / "libvirtd.pid")])):
        if procs.alive(host.pids.get(daemon)):
            continue
        pidfile = run / f"{daemon}.pid"
        pidfile.unlink(missing_ok=True)
        log = hdir / "logs" / f"{daemon}.log"
        binary = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
        result = run_in(host, [binary, *argv[1:]], check=False)
        if result.returncode != 0:
            log.write_text(result.stdout + result.stderr)
            raise procs.DaemonError(f"host {host.name}: {daemon} failed to start", log)
        if not procs.wait_for(lambda: procs.alive(procs.read_pidfile(pidfile)), 10):
            raise procs.DaemonError(f"host {host.name}: {daemon} wrote no pid file", log)
        host.pids[daemon] = procs.read_pidfile(pidfile) or 0
    sock = Path(f"/proc/{host.holder_pid}/root/run/libvirt/libvirt-sock")
    if not procs.wait_for(sock.exists, 15):
        raise procs.DaemonError(f"host {host.name}: libvirtd socket did not appear",
                                hdir / "libvirt" / "log" / "libvirtd.log")
    # The first connection probes the emulators; do it now rather than in a user's call.
    result = run_in(host, ["virsh", "-c", "qemu:///system", "capabilities"], check=False,
                    timeout=300)
    if result.returncode != 0:
        raise procs.DaemonError(f"host {host.name}: libvirtd does not answer: "
                                f"{result.stderr.strip()}", hdir / "libvirt" / "log" / "libvirtd.log")
