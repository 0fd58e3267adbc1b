"""What one lab created, recorded in ``<lab dir>/state.json``.

``lab down`` removes exactly what this file lists, and ``lab status`` prints it (the
``public`` views leave out pids and internal paths but keep everything a user types into
labfleet's registration forms).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("build-server", "qemu-host", "flash-station")


@dataclass
class HostState:
    name: str
    role: str
    address: str
    netns: str
    veth: str
    ssh_port: int = 22
    user: str = "lab"
    uid: int = 0
    host_key: str = ""            # "ssh-ed25519 AAAA..." (no comment)
    fingerprint: str = ""         # SHA256:...
    disk_mb: int = 0
    toolchains: list[str] = field(default_factory=list)
    holder_pid: int | None = None
    pids: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BoardState:
    name: str
    arch: str
    station: str
    power_method: str             # pdu | usb-hub | gpio-relay
    power: dict[str, Any]         # the parameters that method needs
    console_raw_port: int
    console_rfc2217_port: int
    temperature_mc: int = 45000
    card_mb: int = 64


@dataclass
class LabState:
    lab_id: str
    subnet: str
    bridge: str
    gateway: str
    user_key: str
    password_file: str
    known_hosts: str
    kvm: bool = False
    hosts: dict[str, HostState] = field(default_factory=dict)
    boards: dict[str, BoardState] = field(default_factory=dict)
    git_daemon_pid: int | None = None
    git_url: str = ""
    created_dirs: list[str] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        hosts = {k: HostState(**v) for k, v in data.pop("hosts", {}).items()}
        boards = {k: BoardState(**v) for k, v in data.pop("boards", {}).items()}
        return cls(**data, hosts=hosts, boards=boards)

    def host(self, name: str) -> HostState:
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts)) or "none (run `labfleet lab up`)"
            raise KeyError(f"no lab host named {name!r}; lab hosts: {known}")
        return self.hosts[name]

    def board(self, name: str) -> BoardState:
        if name not in self.boards:
            known = ", ".join(sorted(self.boards)) or "none"
            raise KeyError(f"no lab board named {name!r}; lab boards: {known}")
        return self.boards[name]

    def by_role(self, role: str) -> list[HostState]:
        return [h for h in self.hosts.values() if h.role == role]
