"""``labfleet artifact list|get``: find a build's artifacts and download them, verified."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import httpx
import typer

from .api import Api, JsonOption, TokenOption, UrlOption, check, emit_json, fail, human_bytes, run, table

app = typer.Typer(help="List and download build artifacts.", no_args_is_help=True)


@app.command("list")
def list_(build: Annotated[str | None, typer.Option(help="a build id")] = None,
          commit: Annotated[str | None, typer.Option(help="a commit hash (7+ chars)")] = None,
          ref: Annotated[str | None, typer.Option(help="a branch: its latest successful build")] = None,
          arch: Annotated[str | None, typer.Option(help="with --ref or --commit")] = None,
          url: UrlOption = None, token: TokenOption = None, json: JsonOption = False) -> None:
    """Artifacts by build id, by commit, or of the latest successful build of a branch."""
    def go() -> None:
        if not (build or commit or ref):
            fail("say which artifacts: --build ID, --commit SHA or --ref BRANCH [--arch ARCH]")
        params = {k: v for k, v in (("build_id", build), ("commit", commit), ("ref", ref),
                                    ("arch", arch)) if v}
        if ref:
            params["latest"] = "true"
        found = Api.resolve(url, token).call("GET", "/api/v1/artifacts", params=params)
        if json:
            emit_json(found)
            return
        table([[a["build_id"], a["name"], human_bytes(a["size"]), a["sha256"]] for a in found],
              ["BUILD", "NAME", "SIZE", "SHA256"])
    run(go)


@app.command("get")
def get(build_id: str, name: str,
        output: Annotated[Path | None, typer.Option("-o", "--output",
                                                    help="file or directory; default: ./NAME")] = None,
        url: UrlOption = None, token: TokenOption = None) -> None:
    """Download an artifact and check its SHA-256 against the one stored with it."""
    def go() -> None:
        api = Api.resolve(url, token)
        target = output or Path(name)
        if target.is_dir():
            target = target / name
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        with api.client(timeout=None) as client:
            try:
                with client.stream("GET", f"/api/v1/artifacts/{build_id}/{name}") as response:
                    if not response.is_success:
                        response.read()
                        check(response, api.url)
                    expected = response.headers.get("X-Checksum-SHA256", "")
                    with open(partial, "wb") as out:
                        for chunk in response.iter_bytes():
                            digest.update(chunk)
                            out.write(chunk)
            except httpx.HTTPError as exc:
                partial.unlink(missing_ok=True)
                fail(f"the download from {api.url} broke: {exc} — try again")
            except OSError as exc:
                partial.unlink(missing_ok=True)
                fail(f"cannot write {partial}: {exc.strerror}")
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            fail(f"{name} arrived with SHA-256 {digest.hexdigest()}, not the stored {expected}; "
                 "nothing was kept — download it again")
        partial.replace(target)
        typer.echo(f"{target}  {human_bytes(target.stat().st_size)}  sha256 {digest.hexdigest()}"
                   + ("  (verified)" if expected else "  (no checksum sent to verify)"))
    run(go)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="artifact")
