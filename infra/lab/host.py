"""One lab host: a network namespace with its own mounts, work disk, users and sshd.

A small *holder* process (``sleep``) owns the host's mount and UTS namespaces; every
daemon of the host is started inside them with ``nsenter``.  Inside, the host has:

- its own ``/run``, ``/tmp`` and ``/home`` (tmpfs), and ``/home/lab`` on its own ext4
  disk image (sparse file in the lab directory), so filling it fills only this host;
- its own ``/etc/passwd``, ``/etc/group``, ``/etc/shadow``, ``/etc/hostname``, which add
  the ``lab`` user (empty home, ``/bin/sh``: no start-up files to slow every command);
- optionally ``/usr/bin`` overlaid with whiteouts, so a build server can lack a cross
  toolchain that the machine has installed;
- an OpenSSH server on port 22 with its own host key, accepting the lab's key (and the
  lab user's password).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from labfleet.lab import netns, procs
from labfleet.lab.paths import LabPaths
from labfleet.lab.state import HostState, LabState

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CROSS_PREFIXES = {"aarch64": "aarch64-linux-gnu-", "riscv64": "riscv64-linux-gnu-",
                  "arm": "arm-linux-gnueabihf-"}

HOLDER_SCRIPT = r"""
set -eu
H=$1; NAME=$2; OWNER=$3; shift 3
hostname "$NAME"
# Paths of the machine that the private /run, /home and /tmp below would hide but the
# host's daemons need (the Python environment and source tree labfleet runs from), given
# as "keep PATH": stashed under the host's directory first, put back at the end.
keeps=$(while [ $# -gt 0 ]; do [ "$1" = keep ] && printf '%s\n' "$2"; shift; done)
i=0
printf '%s\n' "$keeps" | while IFS= read -r k; do
  [ -n "$k" ] || continue
  i=$((i + 1))
  mkdir -p "$H/keep/$i"
  mount --bind "$k" "$H/keep/$i"
done
mount -t tmpfs -o size=64m,mode=755 lab-run /run
mkdir -p /run/sshd /run/lock /run/libvirt
mount -t tmpfs -o size=16m,mode=755 lab-home /home
mkdir -p /home/lab
mount -o loop,noatime "$H/disk.img" /home/lab
for f in passwd group shadow hostname hosts; do mount --bind "$H/etc/$f" "/etc/$f"; done
# Role mounts: "bind SRC DST" pairs, and "whiteout NAME" for /usr/bin entries.
whiteouts=""
while [ $# -gt 0 ]; do
  case "$1" in
    bind) mount --bind "$2" "$3"; shift 3 ;;
    whiteout) whiteouts="$whiteouts $2"; shift 2 ;;
    keep) shift 2 ;;  # handled above
    *) echo "holder: unknown mount spec $1" >&2; exit 2 ;;
  esac
done
if [ -n "$whiteouts" ]; then
  mkdir -p /run/usrbin/upper /run/usrbin/work
  for w in $whiteouts; do mknod "/run/usrbin/upper/$w" c 0 0; done
  mount -t overlay lab-usrbin -o lowerdir=/usr/bin,upperdir=/run/usrbin/upper,workdir=/run/usrbin/work /usr/bin
fi
mount -t tmpfs -o size=512m,mode=1777 lab-tmp /tmp
# Put back the kept paths (stashed before the private mounts covered them).
i=0
printf '%s\n' "$keeps" | while IFS= read -r k; do
  [ -n "$k" ] || continue
  i=$((i + 1))
  mkdir -p "$k"
  mount --bind "$H/keep/$i" "$k"
  umount -l "$H/keep/$i"
done
touch "$H/ready"
exec sleep infinity
"""


#: mount points the holder covers with its own file systems
PRIVATE_MOUNTS = ("/tmp", "/home", "/run")


def hidden_paths_to_keep(hdir: Path) -> list[str]:
    """The machine's paths under /tmp, /home or /run that the host must still see.

    A checkout (and its virtualenv) may live anywhere, /tmp included; station tools and
    pdudaemon run from it inside the host.  (The lab directory itself must not lie under
    these: the host's set-up stashes the kept paths in it.)
    """
    import labfleet

    source_root = Path(next(iter(labfleet.__path__))).resolve()
    candidates = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
                  Path(sys.executable).resolve().parent, source_root.parent}
    for mod in ("labfleet.lab", "labfleet.shared"):
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin:
            candidates.add(Path(spec.origin).resolve().parents[2])
    keep: list[str] = []
    for path in sorted(candidates, key=lambda p: len(p.parts)):
        if not any(path == Path(m) or Path(m) in path.parents for m in PRIVATE_MOUNTS):
            continue
        if path in (Path(m) for m in PRIVATE_MOUNTS):
            continue
        if any(Path(k) == path or Path(k) in path.parents for k in keep):
            continue  # already inside a kept tree
        keep.append(str(path))
    return keep


class HostError(RuntimeError):
    pass


def free_uid() -> int:
    used = {int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines()
            if line.count(":") >= 6}
    used |= {int(line.split(":")[2]) for line in Path("/etc/group").read_text().splitlines()
             if line.count(":") >= 3}
    uid = 2300
    while any(u in used for u in range(uid, uid + 6)):  # the lab user and libvirt's
        uid += 6
    return uid


def _etc_files(host: HostState, hdir: Path, password_hash: str) -> None:
    etc = hdir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text().rstrip("\n")
    group = Path("/etc/group").read_text().rstrip("\n")
    shadow = Path("/etc/shadow").read_text().rstrip("\n")
    users = f"{host.user}:x:{host.uid}:{host.uid}:labfleet lab user:/home/{host.user}:/bin/sh\n"
    groups = f"{host.user}:x:{host.uid}:\n"
    if host.role == "qemu-host":
        # libvirtd resolves its compiled-in QEMU user and group before reading qemu.conf
        # (libvirt-daemon-system would create them); they exist only inside the host.
        users += f"libvirt-qemu:x:{host.uid + 1}:{host.uid + 2}:libvirt:/nonexistent:/usr/sbin/nologin\n"
        groups += "".join(f"{g}:x:{host.uid + 2 + i}:\n" for i, g in enumerate(
            ("kvm", "libvirt-qemu", "libvirt")) if f"\n{g}:" not in "\n" + group)
    (etc / "passwd").write_text(f"{passwd}\n{users}")
    (etc / "group").write_text(f"{group}\n{groups}")
    (etc / "shadow").write_text(f"{shadow}\n{host.user}:{password_hash}:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o640)
    (etc / "hostname").write_text(host.name + "\n")
    # the host resolves its own name, as a real one does: libvirtd looks it up when a
    # domain starts and would otherwise wait for the resolver's time-out (seconds)
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n"
                               "::1\tlocalhost ip6-localhost ip6-loopback\n")


def _ssh_files(host: HostState, hdir: Path, user_pubkey: str) -> None:
    ssh = hdir / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    key = ssh / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name,
                        "-f", str(key)], check=True)
    (ssh / "authorized_keys").write_text(user_pubkey)
    os.chmod(ssh / "authorized_keys", 0o644)
    (ssh / "sshd_config").write_text(
        "Port 22\n"
        f"HostKey {key}\n"
        f"PidFile {hdir / 'run' / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}\n"
        "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin no\nStrictModes no\nPrintMotd no\nPrintLastLog no\n"
        "UseDNS no\nMaxSessions 64\nMaxStartups 64:30:128\nClientAliveInterval 30\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
    pub = (ssh / "ssh_host_ed25519_key.pub").read_text().split()
    host.host_key = f"{pub[0]} {pub[1]}"
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key) + ".pub"],
                         capture_output=True, text=True, check=True).stdout.split()
    host.fingerprint = out[1]


def _disk(host: HostState, hdir: Path) -> None:
    disk = hdir / "disk.img"
    if disk.exists():
        return
    subprocess.run(["truncate", "-s", f"{host.disk_mb}M", str(disk)], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-O", "^has_journal",
                    "-E", f"root_owner={host.uid}:{host.uid},lazy_itable_init=1",
                    str(disk)], check=True)


def whiteouts_for(toolchains: list[str]) -> list[str]:
    """/usr/bin entries to hide on a host that should lack the cross toolchains not listed."""
    hidden: list[str] = []
    names = os.listdir("/usr/bin")
    for arch, prefix in CROSS_PREFIXES.items():
        if arch not in toolchains:
            hidden += [n for n in names if n.startswith(prefix)]
    return sorted(hidden)


def prepare(lab: LabState, host: HostState, paths: LabPaths, password_hash: str) -> None:
    """Write the host's files (idempotent: keeps an existing host key and disk)."""
    hdir = paths.host_dir(host.name)
    for sub in ("run", "logs"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    _etc_files(host, hdir, password_hash)
    user_pub = Path(lab.user_key + ".pub").read_text()
    _ssh_files(host, hdir, user_pub)
    _disk(host, hdir)


def start_holder(lab: LabState, host: HostState, paths: LabPaths, mounts: list[str]) -> None:
    """Create the namespace and its holder unless a live holder is already there."""
    hdir = paths.host_dir(host.name)
    prefix = int(lab.subnet.split("/")[1])
    netns.ensure_host_netns(host.netns, host.veth, lab.bridge, host.address, prefix, lab.gateway)
    if procs.alive(host.holder_pid) and "sleep" in " ".join(procs.cmdline(host.holder_pid or 0)):
        if _mounts_intact(host, mounts):
            return
        # a mount went away under the host (e.g. its mount point was removed): rebuild it
        stop_all(host)
        host.pids.clear()
    ready = hdir / "ready"
    ready.unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
            "--propagation", "private", "sh", "-c", HOLDER_SCRIPT, "holder", str(hdir),
            host.name, str(host.uid), *mounts]
    whiteouts = whiteouts_for(host.toolchains) if host.role == "build-server" else []
    for name in whiteouts:
        argv += ["whiteout", name]
    for path in hidden_paths_to_keep(hdir):
        argv += ["keep", path]
    log = hdir / "logs" / "holder.log"
    host.holder_pid = procs.spawn(argv, log)
    if not procs.wait_for(ready.exists, 10):
        procs.stop(host.holder_pid)
        raise procs.DaemonError(f"host {host.name}: namespace set-up did not finish", log)


def _mounts_intact(host: HostState, mounts: list[str]) -> bool:
    try:
        info = Path(f"/proc/{host.holder_pid}/mountinfo").read_text().splitlines()
    except OSError:
        return False
    points = {line.split()[4] for line in info}
    wanted = {"/run", "/home/lab", "/tmp"}
    wanted |= {mounts[i + 2] for i, m in enumerate(mounts) if m == "bind"}
    return wanted <= points


def run_in(host: HostState, argv: list[str], check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command inside the host as root (the lab's own management path, not SSH)."""
    assert host.holder_pid, f"host {host.name} has no namespace holder"
    return subprocess.run(procs.in_host(host.holder_pid, argv), capture_output=True, text=True,
                          check=check, timeout=timeout)


def start_sshd(host: HostState, paths: LabPaths) -> None:
    hdir = paths.host_dir(host.name)
    if procs.alive(host.pids.get("sshd")):
        return
    log = hdir / "logs" / "sshd.log"
    assert host.holder_pid
    host.pids["sshd"] = procs.spawn(
        procs.in_host(host.holder_pid, [SSHD, "-D", "-e", "-f", str(hdir / "ssh" / "sshd_config")]),
        log)
    if not procs.wait_for(lambda: _listening(host, 22), 10):
        raise procs.DaemonError(f"host {host.name}: sshd did not start listening", log)


def _listening(host: HostState, port: int) -> bool:
    """Whether something listens on port inside the host (read from its /proc/net/tcp)."""
    assert host.holder_pid
    try:
        table = Path(f"/proc/{host.holder_pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in table)


def listening(host: HostState, port: int) -> bool:
    return _listening(host, port)


def stop_all(host: HostState) -> None:
    """Stop every process in the host's namespace (daemons, VMs, faults) and its holder."""
    for pid in netns.netns_pids(host.netns):
        procs.stop(pid, timeout=3)
    for pid in host.pids.values():
        procs.stop(pid, timeout=3)
    procs.stop(host.holder_pid, timeout=3)

