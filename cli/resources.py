"""``labfleet resource list|host-key|accept-host-key`` over the REST API."""
from __future__ import annotations

from typing import Annotated

import typer

from .api import Api, JsonOption, TokenOption, UrlOption, emit_json, fail, run, table

app = typer.Typer(help="Every registered resource, and its SSH host key.",
                  no_args_is_help=True)


def _find(api: Api, resource: str) -> dict:
    """A resource by id or name."""
    for item in api.call("GET", "/api/v1/resources"):
        if resource in (item["id"], item["name"]):
            return item
    fail(f"no resource is named or has the id {resource!r} — `labfleet resource list` "
         "shows them")


@app.command("list")
def list_(url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Build servers, QEMU hosts and the rest, with their status and pinned host key."""
    def go() -> None:
        items = Api.resolve(url, token).call("GET", "/api/v1/resources")
        if json:
            emit_json(items)
            return
        table([[r["id"], r["kind"], r["name"], f"{r['address']}:{r['port']}", r["status"],
                r.get("host_key_fingerprint") or "–"] for r in items],
              ["ID", "KIND", "NAME", "ADDRESS", "STATUS", "HOST KEY"])
    run(go)


def _show(k: dict) -> None:
    typer.echo(f"{k['name']} ({k['kind']}) at {k['address']}:{k['port']}")
    typer.echo(f"  pinned:    {k['pinned_fingerprint'] or 'not pinned'}")
    typer.echo(f"  presented: {k['presented_fingerprint']}")


@app.command("host-key")
def host_key(resource: Annotated[str, typer.Argument(help="name or id")],
             url: UrlOption = None, token: TokenOption = None,
             json: JsonOption = False) -> None:
    """Ask the host for its key now and compare it with the pinned one (exit 2 when they
    differ)."""
    def go() -> None:
        api = Api.resolve(url, token)
        k = api.call("GET", f"/api/v1/resources/{_find(api, resource)['id']}/host-key")
        if json:
            emit_json(k)
        else:
            _show(k)
            if k["matches"]:
                typer.echo("  the host presents the pinned key")
            else:
                typer.echo("  the host key CHANGED: every service refuses this host. If you "
                           "know why (reinstalled), check the fingerprint on the host itself "
                           "and accept it:\n  labfleet resource accept-host-key "
                           f"{k['resource_id']} --fingerprint {k['presented_fingerprint']}")
        if not k["matches"]:
            raise typer.Exit(2)
    run(go)


@app.command("accept-host-key")
def accept_host_key(resource: Annotated[str, typer.Argument(help="name or id")],
                    fingerprint: Annotated[str, typer.Option(
                        help="the presented fingerprint you accept (SHA256:...), as "
                             "`labfleet resource host-key` shows it")],
                    url: UrlOption = None, token: TokenOption = None,
                    json: JsonOption = False) -> None:
    """Pin the key the host presents now — only if it is the one with FINGERPRINT
    (audit-logged with both fingerprints)."""
    def go() -> None:
        api = Api.resolve(url, token)
        found = _find(api, resource)
        k = api.call("POST", f"/api/v1/resources/{found['id']}/host-key/accept",
                     json={"fingerprint": fingerprint})
        if json:
            emit_json(k)
            return
        typer.echo(f"{k['name']}: host key {k['pinned_fingerprint']} accepted "
                   f"(was {k['previous_fingerprint'] or 'not pinned'})")
    run(go)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="resource")
