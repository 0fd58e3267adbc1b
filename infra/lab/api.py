"""What the rest of labfleet calls: a demo lab, and registering the lab with labfleet.

``ensure_demo_lab()`` brings up (or reuses) a small lab and returns its status;
``register_all(base_url, token)`` registers every lab host and board through labfleet's
HTTP API, exactly as an admin filling in the forms would (the private key is sent, as the
form takes it; it never appears in what this module prints).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from labfleet.lab import lab
from labfleet.lab.paths import LabPaths

ARCH_OF_TOOLCHAIN = {"gcc": "x86_64", "aarch64": "arm64", "riscv64": "riscv64", "arm": "arm"}


class RegistrationError(RuntimeError):
    pass


def ensure_demo_lab(paths: LabPaths | None = None, say: Any = print) -> dict[str, Any]:
    """A small lab (2 build servers, 1 QEMU host, 3 boards), brought up once and reused."""
    paths = paths or LabPaths.from_env()
    lab.up(lab.LabSpec(build_servers=2, qemu_hosts=1, boards=3), paths, say)
    return lab.status(paths)


def registration_payloads(status: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(API path, JSON body) for every host and board in a lab status."""
    key = Path(status["hosts"][0]["key_path"]).read_text() if status["hosts"] else ""
    out: list[tuple[str, dict[str, Any]]] = []
    for h in status["hosts"]:
        ssh = {"hostname": h["name"], "address": h["address"], "ssh_port": h["ssh_port"],
               "username": h["user"], "private_key": key,
               "expected_host_key_fingerprint": h["fingerprint"],
               "labels": {"lab": "emulated", "role": h["role"]}}
        if h["role"] == "build-server":
            ssh["architectures"] = [ARCH_OF_TOOLCHAIN[t] for t in h.get("toolchains", [])]
            out.append(("/api/v1/build-servers", ssh))
        elif h["role"] == "qemu-host":
            out.append(("/api/v1/qemu-hosts", {**ssh, "libvirt_uri": h["libvirt_uri"]}))
        else:
            out.append(("/api/v1/flash-stations", ssh))
    for b in status["boards"]:
        out.append(("/api/v1/boards", {
            "name": b["name"], "board_type": f"qemu-virt-{b['arch']}", "arch": b["arch"],
            "serial_number": f"LAB-{b['name'].upper()}", "flash_station": b["flash_station"],
            "console": {"kind": "ser2net", "host": b["console"]["host"],
                        "port": b["console"]["raw_port"],
                        "rfc2217_port": b["console"]["rfc2217_port"]},
            "power": b["power"], "sd_card": b["sd_card"], "labels": {"lab": "emulated"}}))
    return out


def register_all(base_url: str, token: str, paths: LabPaths | None = None) -> list[str]:
    """Register the running lab with labfleet; returns one line per resource."""
    status = lab.status(paths)
    if not status["up"]:
        raise RegistrationError(f"no lab in {status['lab_dir']}: run `labfleet lab up` first")
    lines = []
    with httpx.Client(base_url=base_url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for path, body in registration_payloads(status):
            name = body.get("hostname") or body.get("name")
            try:
                r = client.post(path, json=body)
            except httpx.HTTPError as exc:
                raise RegistrationError(f"cannot reach labfleet at {base_url}: {exc}") from exc
            if r.status_code == 401:
                raise RegistrationError("labfleet refused the token (401): create one with "
                                        "the UI or `POST /api/v1/tokens`")
            if r.status_code in (404, 405):
                lines.append(f"{name}: skipped ({path} is not offered by this labfleet)")
            elif r.status_code == 409:
                lines.append(f"{name}: already registered")
            elif r.is_success:
                lines.append(f"{name}: registered ({path})")
            else:
                detail = r.text[:300]
                lines.append(f"{name}: refused with HTTP {r.status_code}: {detail}")
    return lines
