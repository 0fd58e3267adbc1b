"""A real OpenSSH server on loopback for tests: its own host key, config and pid file.

It runs as the current user (root here) on a free port and accepts the one key pair it
generates; password authentication is enabled so that a wrong password is rejected by
sshd itself, exactly as on a real host.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from labfleet.embedded.ports import free_port, wait_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    host: str
    port: int
    username: str
    private_key: str
    private_key_path: Path
    host_key: str  # OpenSSH public key line
    process: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def swap_host_key(self) -> str:
        """Give the server a freshly generated host key (as a reinstall, or someone in
        between, would) and make sshd use it (SIGHUP: sshd re-executes itself with its
        configuration; open sessions stay).  Returns the new public key line."""
        for name in ("host_key", "host_key.pub"):
            (self.workdir / name).unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(self.workdir / "host_key")], check=True)
        self.host_key = " ".join((self.workdir / "host_key.pub").read_text().split()[:2])
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the re-executed sshd listens again
            out = subprocess.run(["ssh-keyscan", "-T", "2", "-t", "ed25519", "-p",
                                  str(self.port), self.host], capture_output=True, text=True)
            if self.host_key.split()[1] in out.stdout:
                return self.host_key
            time.sleep(0.05)
        raise RuntimeError("sshd did not take the new host key")

    def restart(self) -> None:
        self.stop()
        self.process = _spawn(self.workdir)
        if not wait_port(self.host, self.port, 10):
            raise RuntimeError("sshd did not come back")


def _spawn(workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([SSHD, "-D", "-e", "-f", str(workdir / "sshd_config")],
                            stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "sshd.log", "ab"))  # noqa: SIM115


def start_sshd(workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> Sshd:
    if not Path(SSHD).exists():
        raise FileNotFoundError("sshd is not installed (Debian package openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_key")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "user_key")],
                   check=True)
    shutil.copy(workdir / "user_key.pub", workdir / "authorized_keys")
    port = port or free_port(host)
    username = os.environ.get("USER") or "root"
    import pwd

    username = pwd.getpwuid(os.getuid()).pw_name
    (workdir / "sshd_config").write_text(
        f"Port {port}\nListenAddress {host}\n"
        f"HostKey {workdir / 'host_key'}\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\n"
        "PermitRootLogin yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\nMaxSessions 50\nMaxStartups 100:30:200\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    proc = _spawn(workdir)
    if not wait_port(host, port, 10):
        proc.kill()
        raise RuntimeError(f"sshd did not start: {(workdir / 'sshd.log').read_text()[-2000:]}")
    time.sleep(0.05)
    return Sshd(
        host=host, port=port, username=username,
        private_key=(workdir / "user_key").read_text(),
        private_key_path=workdir / "user_key",
        host_key=" ".join((workdir / "host_key.pub").read_text().split()[:2]),
        process=proc, workdir=workdir,
    )
