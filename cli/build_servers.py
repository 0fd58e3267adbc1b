"""``labfleet build-server add|list|show|maintenance|remove`` over the REST API."""
from __future__ import annotations

from datetime import datetime
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

app = typer.Typer(help="Register, inspect, maintain and remove build servers.",
                  no_args_is_help=True)


def _find(api: Api, server: str) -> dict:
    """A server by id or name."""
    page = api.call("GET", "/api/v1/build-servers", params={"q": server, "size": 200})
    for item in page["items"]:
        if server in (item["id"], item["name"]):
            return item
    fail(f"no build server is named or has the id {server!r} — `labfleet build-server list` "
         "shows them")


@app.command("add")
def add(hostname: Annotated[str, typer.Argument(help="unique name")],
        address: Annotated[str, typer.Option(help="IP address or DNS name")],
        user: Annotated[str, typer.Option("--user", help="SSH user")],
        key: Annotated[Path | None, typer.Option(help="private key file")] = None,
        password_env: Annotated[str | None, typer.Option(
            help="name of an environment variable holding the SSH password")] = None,
        port: Annotated[int, typer.Option(help="SSH port")] = 22,
        arch: Annotated[list[str], typer.Option(help="x86_64, arm, arm64, riscv64")] = [],  # noqa: B006
        config: Annotated[list[str], typer.Option(help="a build configuration it builds")] = [],  # noqa: B006
        label: Annotated[list[str], typer.Option(help="key=value")] = [],  # noqa: B006
        work_dir: Annotated[str | None, typer.Option(help="where builds run")] = None,
        fingerprint: Annotated[str | None, typer.Option(
            help="the host key fingerprint you expect (SHA256:...)")] = None,
        url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Connect over SSH, check toolchains, tools and disk, and add the server to the pool."""
    def go() -> None:
        body: dict = {"hostname": hostname, "address": address, "ssh_port": port,
                      "username": user, "architectures": arch, "build_configs": config,
                      "labels": labels(label), "work_dir": work_dir,
                      "expected_host_key_fingerprint": fingerprint}
        body.update(ssh_secret(key, password_env))
        server = Api.resolve(url, token).call("POST", "/api/v1/build-servers", json=body)
        if json:
            emit_json(server)
            return
        caps = server.get("capabilities") or {}
        typer.echo(f"registered {server['name']} ({server['id']})")
        typer.echo(f"  host key {server['ssh']['host_key_fingerprint']}")
        typer.echo(f"  {caps.get('cpu_cores')} cores, {caps.get('memory_mb')} MB memory, "
                   f"{caps.get('disk_free_gb')} GB free of {caps.get('disk_total_gb')}")
        for t in caps.get("toolchains", []):
            typer.echo(f"  {t['arch']}: {t['compiler']} — {t['version']}")
    run(go)


@app.command("list")
def list_(url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Every build server with its status, load and active builds."""
    def go() -> None:
        page = Api.resolve(url, token).call("GET", "/api/v1/build-servers",
                                            params={"size": 200})
        if json:
            emit_json(page)
            return
        rows = []
        for s in page["items"]:
            sample = s.get("sample") or {}
            warn = "; ".join((s.get("health") or {}).get("warnings") or [])
            rows.append([s["name"], s["status"], s["lifecycle"], ",".join(s["architectures"]),
                         f"{sample.get('cpu_pct', '–')}", f"{sample.get('disk_free_gb', '–')}",
                         str(s["active_builds"]), warn])
        table(rows, ["NAME", "STATUS", "LIFECYCLE", "ARCHS", "CPU%", "DISK FREE GB", "ACTIVE",
                     "WARNINGS"])
    run(go)


@app.command("show")
def show(server: Annotated[str, typer.Argument(help="name or id")],
         url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Toolchains, build history, average build times, current job and queue depth."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, server)
        d = api.call("GET", f"/api/v1/build-servers/{found['id']}")
        if json:
            emit_json(d)
            return
        caps = d.get("capabilities") or {}
        typer.echo(f"{d['name']}  {d['status']}  ({d['lifecycle']})  "
                   f"ssh -p {d['ssh']['port']} {d['ssh']['username']}@{d['ssh']['address']}")
        if d.get("maintenance"):
            m = d["maintenance"]
            typer.echo(f"maintenance: {m.get('reason') or '-'} from {m.get('start') or 'now'} "
                       f"until {m.get('end') or 'ended'}")
        typer.echo(f"pause on low disk: {'yes' if d.get('pause_on_low_disk') else 'no'}")
        for t in caps.get("toolchains", []):
            typer.echo(f"toolchain {t['arch']}: {t['compiler']} — {t['version']}")
        typer.echo(f"current builds: {len(d['current_builds'])}; waiting builds it could "
                   f"take: {d['queue_depth']}")
        for a in d["average_build_times"]:
            typer.echo(f"average {a['arch']} {a['config']}: {a['mean_s']} s over "
                       f"{a['builds']} builds")
        table([[b["id"][:8], b["status"], b["spec"]["arch"], (b.get("commit") or "")[:12],
                f"{b['duration_s']}" if b.get("duration_s") is not None else "–"]
               for b in d["builds"]], ["BUILD", "STATUS", "ARCH", "COMMIT", "SECONDS"])
    run(go)


@app.command("maintenance")
def maintenance(server: Annotated[str, typer.Argument(help="name or id")],
                off: Annotated[bool, typer.Option("--off", help="end maintenance")] = False,
                reason: Annotated[str, typer.Option(help="why (shown to users)")] = "",
                start: Annotated[datetime | None, typer.Option(help="window start (ISO)")] = None,
                end: Annotated[datetime | None, typer.Option(help="window end (ISO)")] = None,
                pause_on_low_disk: Annotated[bool | None, typer.Option(
                    "--pause-on-low-disk/--no-pause-on-low-disk",
                    help="no new builds while disk is under the warning level")] = None,
                url: UrlOption = None, token: TokenOption = None, json: JsonOption = False
                ) -> None:
    """Put a server in maintenance (running builds finish, queued ones go elsewhere)."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, server)
        path = f"/api/v1/build-servers/{found['id']}"
        if pause_on_low_disk is not None:
            result = api.call("PATCH", f"{path}/options",
                              json={"pause_on_low_disk": pause_on_low_disk})
        if not (pause_on_low_disk is not None and not (off or reason or start or end)):
            result = api.call("POST", f"{path}/maintenance", json={
                "on": not off, "reason": reason,
                "start": start.isoformat() if start else None,
                "end": end.isoformat() if end else None})
        if json:
            emit_json(result)
            return
        m = result.get("maintenance")
        typer.echo(f"{result['name']}: {result['lifecycle']}"
                   + (f" (window {m.get('start') or 'now'} – {m.get('end') or 'until ended'})"
                      if m else "")
                   + f"; pause on low disk: {'yes' if result.get('pause_on_low_disk') else 'no'}")
    run(go)


@app.command("remove")
def remove(server: Annotated[str, typer.Argument(help="name or id")],
           force: Annotated[bool, typer.Option(help="even with active builds")] = False,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
           url: UrlOption = None, token: TokenOption = None) -> None:
    """Decommission: refused while builds run there, unless --force."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, server)
        if not yes and not typer.confirm(f"decommission {found['name']}?"):
            fail("not confirmed; nothing was changed")
        api.call("DELETE", f"/api/v1/build-servers/{found['id']}",
                 params={"force": "true" if force else "false"})
        typer.echo(f"decommissioned {found['name']}")
    run(go)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="build-server")
