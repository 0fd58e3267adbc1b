"""``labfleet qemu-host add|list|show|remove`` over the REST API."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .api import (
    Api,
    JsonOption,
    TokenOption,
    UrlOption,
    emit_json,
    fail,
    labels,
    run,
    ssh_secret,
    table,
)

app = typer.Typer(help="Register, inspect and remove QEMU hosts (libvirt over SSH).",
                  no_args_is_help=True)

ARCHES = ("x86_64", "arm", "arm64", "riscv64")


def _find(api: Api, host: str) -> dict:
    """A host by id or name."""
    for item in api.call("GET", "/api/v1/qemu-hosts")["items"]:
        if host in (item["id"], item["name"]):
            return item
    fail(f"no QEMU host is named or has the id {host!r} — `labfleet qemu-host list` shows them")


def _pct(used: float, total: float) -> str:
    return f"{100.0 * used / total:.0f} %" if total else "–"


@app.command("add")
def add(hostname: Annotated[str, typer.Argument(help="unique name")],
        address: Annotated[str, typer.Option(help="IP address or DNS name")],
        user: Annotated[str, typer.Option("--user", help="SSH user that may use qemu:///system")],
        key: Annotated[Path | None, typer.Option(help="private key file")] = None,
        password_env: Annotated[str | None, typer.Option(
            help="name of an environment variable holding the SSH password")] = None,
        port: Annotated[int, typer.Option(help="SSH port")] = 22,
        guest: Annotated[list[str], typer.Option(
            help="a guest architecture it must run: x86_64, arm, arm64, riscv64")] = [],  # noqa: B006
        vcpus: Annotated[int | None, typer.Option(help="vCPUs VMs may take")] = None,
        memory_mb: Annotated[int | None, typer.Option(help="memory (MB) VMs may take")] = None,
        image_dir: Annotated[str | None, typer.Option(help="where images are cached")] = None,
        label: Annotated[list[str], typer.Option(help="key=value")] = [],  # noqa: B006
        fingerprint: Annotated[str | None, typer.Option(
            help="the host key fingerprint you expect (SHA256:...)")] = None,
        url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Validate over SSH and libvirt, detect KVM and guest emulators, add the host."""
    def go() -> None:
        bad = [g for g in guest if g not in ARCHES]
        if bad:
            fail(f"unknown guest architecture {', '.join(bad)}: use {', '.join(ARCHES)}")
        body: dict = {"hostname": hostname, "address": address, "ssh_port": port,
                      "username": user, "guest_architectures": guest,
                      "allocatable_vcpus": vcpus, "allocatable_memory_mb": memory_mb,
                      "image_dir": image_dir, "labels": labels(label),
                      "expected_host_key_fingerprint": fingerprint}
        body.update(ssh_secret(key, password_env))
        host = Api.resolve(url, token).call("POST", "/api/v1/qemu-hosts", json=body)
        if json:
            emit_json(host)
            return
        q = host.get("qemu") or {}
        kvm = q.get("kvm") or {}
        typer.echo(f"registered {host['name']} ({host['id']})")
        typer.echo(f"  host key {host['ssh']['host_key_fingerprint']}")
        typer.echo(f"  {q.get('cpu_cores')} cores ({q.get('cpu_arch')}), {q.get('memory_mb')} MB "
                   f"memory, {q.get('storage_free_gb')} GB free in {q.get('image_dir')}")
        typer.echo(f"  libvirt {q.get('libvirt_version')}, KVM "
                   f"{'usable' if kvm.get('usable') else 'not usable'}: {kvm.get('reason')}")
        for g in q.get("guests", []):
            typer.echo(f"  guest {g['arch']}: {g['emulator']} {g['version']}")
    run(go)


@app.command("list")
def list_(url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Every QEMU host with its status, use and running VMs."""
    def go() -> None:
        page = Api.resolve(url, token).call("GET", "/api/v1/qemu-hosts")
        if json:
            emit_json(page)
            return
        rows = []
        for h in page["items"]:
            s = h.get("sample") or {}
            warnings = "; ".join((h.get("health") or {}).get("warnings") or [])
            rows.append([h["name"], f"{h['ssh']['address']}:{h['ssh']['port']}", h["status"],
                         f"{s['cpu_pct']:.0f} %" if s else "–",
                         _pct(s.get("mem_used_mb", 0), s.get("mem_total_mb", 0)) if s else "–",
                         _pct(s.get("disk_total_gb", 0) - s.get("disk_free_gb", 0),
                              s.get("disk_total_gb", 0)) if s else "–",
                         "–" if h.get("vm_count") is None else str(h["vm_count"]), warnings])
        table(rows, ["NAME", "ADDRESS", "STATUS", "CPU", "MEM", "STORAGE", "VMS", "WARNINGS"])
    run(go)


@app.command("show")
def show(host: Annotated[str, typer.Argument(help="name or id")],
         window: Annotated[str, typer.Option(help="history: hour, day or week")] = "hour",
         url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Capabilities, health, running VMs, network and the history's extremes."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, host)
        d = api.call("GET", f"/api/v1/qemu-hosts/{found['id']}", params={"window": window})
        if json:
            emit_json(d)
            return
        q = d.get("qemu") or {}
        health = d.get("health") or {}
        typer.echo(f"{d['name']} ({d['id']}) — {d['status']}"
                   + (f": {health.get('reason')}" if health.get("reason") else ""))
        if d["status"] == "offline" and health.get("last_seen"):
            typer.echo(f"  last seen {health['last_seen']}")
        typer.echo(f"  libvirt {q.get('libvirt_uri')} ({q.get('libvirt_version')})")
        typer.echo(f"  KVM {'usable' if (q.get('kvm') or {}).get('usable') else 'not usable'}: "
                   f"{(q.get('kvm') or {}).get('reason')}")
        typer.echo(f"  guests: {', '.join(g['arch'] for g in q.get('guests', [])) or 'none'}")
        typer.echo(f"  VMs may take {q.get('allocatable_vcpus')} vCPUs, "
                   f"{q.get('allocatable_memory_mb')} MB")
        typer.echo("VMs:")
        for vm in d.get("vms", []):
            typer.echo(f"  {vm['name']}  {vm['state']}  {vm['vcpus']} vCPU  {vm['memory_mb']} MiB"
                       f"  {vm.get('title', '')}")
        typer.echo("network:")
        for i in d.get("interfaces", []):
            typer.echo(f"  {i['name']}  {i['state']}  {', '.join(i['addresses'])}")
        for problem in d.get("problems", []):
            typer.echo(f"  ! {problem}")
        history = d.get("history") or []
        if history:
            typer.echo(f"history ({window}, {len(history)} points): CPU max "
                       f"{max(s['cpu_pct'] for s in history):.0f} %")
    run(go)


@app.command("remove")
def remove(host: Annotated[str, typer.Argument(help="name or id")],
           url: UrlOption = None, token: TokenOption = None) -> None:
    """Take the host out of the pool (its VMs are not touched)."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, host)
        api.call("DELETE", f"/api/v1/qemu-hosts/{found['id']}")
        typer.echo(f"removed {found['name']} ({found['id']})")
    run(go)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="qemu-host")
