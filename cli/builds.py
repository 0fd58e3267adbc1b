"""``labfleet build submit|list|show|logs|cancel|pin|tag`` over the REST API."""
from __future__ import annotations

import sys
from typing import Annotated

import httpx
import typer

from .api import Api, JsonOption, TokenOption, UrlOption, check, emit_json, fail, human_bytes, run, table

app = typer.Typer(help="Submit builds, follow them and keep their artifacts.",
                  no_args_is_help=True)

TERMINAL = ("succeeded", "failed", "cancelled")


def follow_log(api: Api, build_id: str) -> None:
    """Print the log as it arrives until the build ends."""
    with api.client(timeout=None) as client:
        try:
            with client.stream("GET", f"/api/v1/builds/{build_id}/log",
                               params={"follow": "1"}) as response:
                if not response.is_success:
                    response.read()
                    check(response, api.url)
                for text in response.iter_text():
                    sys.stdout.write(text)
                    sys.stdout.flush()
        except httpx.HTTPError as exc:
            fail(f"the log stream from {api.url} broke: {exc} — run "
                 f"`labfleet build logs -f {build_id}` to pick it up again")


def _status_line(b: dict) -> str:
    took = f", {b['duration_s']} s" if b.get("duration_s") is not None else ""
    where = f" on {b['server_name']}" if b.get("server_name") else ""
    return f"{b['id']}  {b['status']}{where}{took}"


@app.command("submit")
def submit(repo: Annotated[str, typer.Option(help="git repository URL")],
           arch: Annotated[str, typer.Option(help="x86_64, arm, arm64, riscv64")],
           ref: Annotated[str, typer.Option(help="branch, tag or commit")] = "HEAD",
           config: Annotated[str, typer.Option(help="kconfig target, e.g. tinyconfig")] = "",
           fragment: Annotated[list[str], typer.Option(help="config fragment path")] = [],  # noqa: B006
           target: Annotated[list[str], typer.Option(help="make target")] = [],  # noqa: B006
           artifact: Annotated[list[str], typer.Option(help="path (glob) to collect")] = [],  # noqa: B006
           server: Annotated[str | None, typer.Option(help="a server's name or id; default Auto")] = None,
           label: Annotated[list[str], typer.Option(help="key=value the server must carry")] = [],  # noqa: B006
           follow: Annotated[bool, typer.Option("--follow", "-f", help="then stream the log")] = False,
           url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Queue a build; prints its id, queue position and estimated start."""
    def go() -> None:
        labels = {}
        for pair in label:
            k, sep, v = pair.partition("=")
            if not sep:
                fail(f"label {pair!r} must look like key=value")
            labels[k] = v
        api = Api.resolve(url, token)
        accepted = api.call("POST", "/api/v1/builds", json={
            "repo_url": repo, "ref": ref, "arch": arch, "config": config,
            "config_fragments": fragment, "make_targets": target, "artifacts": artifact,
            "server": server, "labels": labels})
        if json:
            emit_json(accepted)
        else:
            eta = accepted.get("estimated_start_s")
            typer.echo(f"{accepted['id']}  queued at position {accepted.get('position')}"
                       + (f", expected to start in {eta:.0f} s" if eta is not None else ""))
        if follow:
            follow_log(api, accepted["id"])
            final = api.call("GET", f"/api/v1/builds/{accepted['id']}")
            typer.echo(_status_line(final), err=True)
            if final["status"] != "succeeded":
                raise typer.Exit(1)
    run(go)


@app.command("list")
def list_(limit: Annotated[int, typer.Option(help="how many, newest first")] = 50,
          url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Build history: status, duration, artifact sizes."""
    def go() -> None:
        builds = Api.resolve(url, token).call("GET", "/api/v1/builds", params={"limit": limit})
        if json:
            emit_json(builds)
            return
        table([[b["id"], b["status"], b["spec"]["arch"], b["spec"]["config"] or "-",
                b.get("server_name") or "-", (b.get("commit") or "")[:12],
                str(b["duration_s"]) if b.get("duration_s") is not None else "–",
                human_bytes(sum(a["size"] for a in b["artifacts"])) if b["artifacts"]
                else ("expired" if b.get("artifacts_expired_at") else "–"),
                ("pinned " if b.get("pinned") else "") + ",".join(b.get("tags") or [])]
               for b in builds],
              ["BUILD", "STATUS", "ARCH", "CONFIG", "SERVER", "COMMIT", "SECONDS", "ARTIFACTS",
               "KEPT"])
    run(go)


@app.command("show")
def show(build_id: str, url: UrlOption = None, token: TokenOption = None,
         json: JsonOption = False) -> None:
    """Server, duration, resource use, artifacts with sizes, links and locations."""
    def go() -> None:
        api = Api.resolve(url, token)
        b = api.call("GET", f"/api/v1/builds/{build_id}")
        if json:
            emit_json(b)
            return
        typer.echo(_status_line(b))
        typer.echo(f"source {b['spec']['repo_url']} @ {b['spec']['ref']}"
                   + (f" → {b['commit']}" if b.get("commit") else ""))
        typer.echo(f"target {b['spec']['arch']} {b['spec']['config'] or ''}".rstrip())
        if b.get("error"):
            e = b["error"]
            typer.echo(f"error {e['code']}: {e['message']}" + (f" — {e['hint']}" if e.get("hint") else ""))
        usage = b.get("resource_usage") or {}
        if usage.get("samples"):
            typer.echo(f"server CPU {usage['cpu_pct_mean']} % mean / {usage['cpu_pct_max']} % "
                       f"peak, memory up to {usage['mem_used_mb_max']} MB")
        for a, where in zip(b["artifacts"], b.get("artifact_locations") or [], strict=False):
            typer.echo(f"artifact {a['name']}  {human_bytes(a['size'])}  sha256 {a['sha256']}  "
                       f"{api.url}{a['download_url']}  ({where})")
        if b.get("artifacts_expired_at"):
            typer.echo(f"artifacts deleted by retention at {b['artifacts_expired_at']}")
        if b.get("pinned") or b.get("tags"):
            typer.echo("kept: " + ("pinned " if b.get("pinned") else "") + " ".join(b["tags"]))
    run(go)


@app.command("logs")
def logs(build_id: str,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="until the build ends")] = False,
         url: UrlOption = None, token: TokenOption = None) -> None:
    """The build's log (with -f: live, until the build ends)."""
    def go() -> None:
        api = Api.resolve(url, token)
        if follow:
            follow_log(api, build_id)
            return
        with api.client() as client:
            response = client.get(f"/api/v1/builds/{build_id}/log")
        check(response, api.url)
        sys.stdout.write(response.text)
    run(go)


@app.command("cancel")
def cancel(build_id: str, url: UrlOption = None, token: TokenOption = None) -> None:
    """Cancel a queued or running build (its remote processes are killed)."""
    def go() -> None:
        b = Api.resolve(url, token).call("POST", f"/api/v1/builds/{build_id}/cancel")
        typer.echo(_status_line(b) if b else f"{build_id} cancel requested")
    run(go)


@app.command("pin")
def pin(build_id: str, off: Annotated[bool, typer.Option("--off", help="unpin")] = False,
        url: UrlOption = None, token: TokenOption = None) -> None:
    """Keep the build's artifacts past the retention period."""
    def go() -> None:
        b = Api.resolve(url, token).call("POST", f"/api/v1/builds/{build_id}/pin",
                                         json={"pinned": not off})
        typer.echo(f"{b['id']} {'pinned' if b['pinned'] else 'not pinned'}")
    run(go)


@app.command("tag")
def tag(build_id: str, tags: Annotated[list[str], typer.Argument(help="one or more tags")],
        remove: Annotated[bool, typer.Option("--remove", help="take the tags away")] = False,
        url: UrlOption = None, token: TokenOption = None) -> None:
    """Tag a build (tagged builds are kept by retention)."""
    def go() -> None:
        b = Api.resolve(url, token).call("POST", f"/api/v1/builds/{build_id}/tag",
                                         json={"tags": tags, "remove": remove})
        typer.echo(f"{b['id']} tags: {', '.join(b['tags']) or 'none'}")
    run(go)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="build")
