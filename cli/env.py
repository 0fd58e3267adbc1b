"""``labfleet env ...``: QEMU test environments through the gateway's REST API.

``create`` takes the artifacts by ``--build``, ``--commit`` or ``--branch`` (latest
successful build of that branch for the architecture) and a ``--host`` or Auto; it prints
where the environment went (or its place in the queue and the expected wait) and, with
``--wait``, follows the console until the boot is judged.
"""
from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import httpx
import typer

app = typer.Typer(help="QEMU test environments: create, list, show, release, redeploy, "
                       "rollback, console.", no_args_is_help=True)

Url = Annotated[str, typer.Option(envvar="LABFLEET_URL", help="labfleet gateway base URL")]
Token = Annotated[str, typer.Option(envvar="LABFLEET_TOKEN", help="API bearer token")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="env")


def _client(url: str, token: str) -> httpx.Client:
    if not token:
        _fail("an API token is needed: --token or LABFLEET_TOKEN "
              "(create one on the web UI or with POST /api/v1/tokens)")
    return httpx.Client(base_url=url.rstrip("/") + "/api/v1", timeout=90.0,
                        headers={"Authorization": f"Bearer {token}"})


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {client.base_url}: {exc}")
    if r.status_code >= 400:
        try:
            err = r.json().get("error", {})
        except ValueError:
            err = {"message": r.text}
        extra = err.get("details", {}).get("alternatives") if isinstance(err, dict) else None
        message = err.get("message", r.text) if isinstance(err, dict) else str(err)
        hint = f" — {err['hint']}" if isinstance(err, dict) and err.get("hint") else ""
        alts = f"\nhosts that would fit: {', '.join(extra)}" if extra else ""
        _fail(f"{message}{hint}{alts}")
    return r.json()


def _line(e: dict[str, Any]) -> str:
    wait = ""
    if e.get("status") == "queued" and e.get("position"):
        est = e.get("estimated_wait_s")
        wait = f" #{e['position']}" + (f" ~{est:.0f}s" if est is not None else "")
    return (f"{e['env_id']}  {e['status']}{wait}  {e['spec']['arch']}  "
            f"{e.get('host_name') or '-'}  build {e.get('build_id') or '-'}  "
            f"{(e.get('commit') or '')[:12]}")


@app.command()
def create(
    arch: Annotated[str, typer.Option(help="x86_64 | arm64 | riscv64 | arm")],
    url: Url = "http://127.0.0.1:8080", token: Token = "",
    build: Annotated[str | None, typer.Option(help="build id")] = None,
    commit: Annotated[str | None, typer.Option(help="commit hash (7+ characters)")] = None,
    branch: Annotated[str | None, typer.Option(help="latest successful build of a branch")] = None,
    host: Annotated[str, typer.Option(help="QEMU host name, or Auto")] = "Auto",
    vcpus: int = 1, memory_mb: int = 256,
    kvm: Annotated[bool, typer.Option(help="require KVM")] = False,
    marker: Annotated[str, typer.Option(help="boot marker on the console")] = "LABFLEET-BOOT-OK",
    cmdline: Annotated[str, typer.Option(help="extra kernel command line")] = "",
    timeout: Annotated[float, typer.Option(help="boot timeout in seconds")] = 120.0,
    name: str = "",
    wait: Annotated[bool, typer.Option(help="follow the console until the boot is judged")] = False,
    as_json: AsJson = False,
) -> None:
    """Reserve a QEMU host and deploy a build's kernel (queued with an estimate if none fits)."""
    selector = {k: v for k, v in (("build_id", build), ("commit", commit), ("branch", branch))
                if v}
    if len(selector) != 1:
        _fail("give exactly one of --build, --commit or --branch")
    body = {"arch": arch, "vcpus": vcpus, "memory_mb": memory_mb, "kvm": kvm,
            "artifacts": selector, "host": None if host.lower() == "auto" else host,
            "boot_marker": marker, "cmdline": cmdline, "boot_timeout_s": timeout, "name": name}
    with _client(url, token) as client:
        accepted = _call(client, "POST", "/environments", json=body)
        if as_json:
            typer.echo(json.dumps(accepted))
        elif accepted["status"] == "queued":
            est = accepted.get("estimated_wait_s")
            typer.echo(f"{accepted['id']} queued at #{accepted.get('position')}"
                       + (f", expected wait {est:.0f} s" if est is not None else
                          ", no estimate (no capable host is available)"))
            if accepted.get("warning"):
                typer.echo(f"warning: {accepted['warning']}")
        else:
            typer.echo(f"{accepted['id']} placed on {accepted.get('host')}")
        if wait:
            _follow(client, accepted["id"])
            env = _call(client, "GET", f"/environments/{accepted['id']}")
            typer.echo(_line(env))
            if env["status"] != "running":
                raise typer.Exit(1)


def _follow(client: httpx.Client, env_id: str) -> None:
    with client.stream("GET", f"/environments/{env_id}/console", params={"follow": 1},
                       timeout=None) as r:
        for text in r.iter_text():
            sys.stdout.write(text)
            sys.stdout.flush()


@app.command("list")
def list_(url: Url = "http://127.0.0.1:8080", token: Token = "", as_json: AsJson = False) -> None:
    """Environments, newest first."""
    with _client(url, token) as client:
        envs = _call(client, "GET", "/environments")
    if as_json:
        typer.echo(json.dumps(envs))
        return
    for e in envs:
        typer.echo(_line(e))


@app.command()
def hosts(url: Url = "http://127.0.0.1:8080", token: Token = "", as_json: AsJson = False) -> None:
    """QEMU hosts with their free capacity (what Auto chooses among)."""
    with _client(url, token) as client:
        found = _call(client, "GET", "/environments/hosts")
    if as_json:
        typer.echo(json.dumps(found))
        return
    for h in found:
        why = "" if h["available"] else f"  unavailable: {', '.join(h['reasons'])}"
        typer.echo(f"{h['name']}  {h['free_vcpus']} vCPU  {h['free_memory_mb']} MiB free  "
                   f"{'/'.join(h['arches'])}{'  KVM' if h['kvm'] else ''}{why}")


@app.command()
def show(env_id: str, url: Url = "http://127.0.0.1:8080", token: Token = "",
         as_json: AsJson = False) -> None:
    """Host, VM, build, commit, deployment time, status and how to reach the console."""
    with _client(url, token) as client:
        e = _call(client, "GET", f"/environments/{env_id}")
    if as_json:
        typer.echo(json.dumps(e))
        return
    typer.echo(_line(e))
    for key in ("vm_name", "deployed_at", "console"):
        if e.get(key):
            typer.echo(f"  {key}: {e[key]}")
    if e.get("error"):
        typer.echo(f"  error: {e['error']['message']}")
    for d in e.get("deployments", []):
        typer.echo(f"  deployment {d['number']}: {d['status']}"
                   + (f" ({d['failure']})" if d.get("failure") else "")
                   + f", build {d['build_id']}, sent {d['transferred_bytes']} B")


def _action(action: str, env_id: str, url: str, token: str, body: Any = None) -> None:
    with _client(url, token) as client:
        result = _call(client, "POST", f"/environments/{env_id}/{action}", json=body)
    typer.echo(json.dumps(result) if action != "release" else f"{env_id} released")


@app.command()
def release(env_id: str, url: Url = "http://127.0.0.1:8080", token: Token = "") -> None:
    """Destroy the VM and free the host's reservation."""
    _action("release", env_id, url, token)


@app.command()
def redeploy(env_id: str, url: Url = "http://127.0.0.1:8080", token: Token = "",
             build: Annotated[str | None, typer.Option(help="deploy this build instead")] = None
             ) -> None:
    """Deploy again (retry), or another build with --build."""
    _action("redeploy", env_id, url, token,
            {"artifacts": {"build_id": build}} if build else None)


@app.command()
def rollback(env_id: str, url: Url = "http://127.0.0.1:8080", token: Token = "") -> None:
    """Deploy the previous deployment's build again."""
    _action("rollback", env_id, url, token)


@app.command()
def console(env_id: str, url: Url = "http://127.0.0.1:8080", token: Token = "",
            follow: Annotated[bool, typer.Option(help="stream until the boot is judged")] = False
            ) -> None:
    """The serial console captured during deployments."""
    with _client(url, token) as client:
        if follow:
            _follow(client, env_id)
            return
        r = client.get(f"/environments/{env_id}/console")
        if r.status_code >= 400:
            _fail(r.text)
        sys.stdout.write(r.text)
