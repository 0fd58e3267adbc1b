"""The REST API as the CLI's commands see it: where it is, who we are, clear failures.

The URL and token come from ``--url``/``--token``, else ``LABFLEET_URL``/``LABFLEET_TOKEN``,
else a local ``labfleet up``'s data directory (its endpoints file and the admin's
credentials file).  Every failure becomes one sentence saying what failed and what to do.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from labfleet.shared.settings import default_data_dir

from .datadir import CREDENTIALS_FILE, RunFiles

UrlOption = Annotated[str | None, typer.Option(
    "--url", envvar="LABFLEET_URL", help="the gateway, e.g. http://127.0.0.1:8080")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="LABFLEET_TOKEN", help="an API token (create one in the web UI)",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


class CliError(Exception):
    """Stops the command with a message on stderr and exit status 1."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def _data_dir() -> Path:
    return Path(os.environ.get("LABFLEET_DATA_DIR") or default_data_dir())


def _local_credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / CREDENTIALS_FILE
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@dataclass
class Api:
    url: str
    token: str
    timeout: float = 120.0

    @classmethod
    def resolve(cls, url: str | None, token: str | None) -> Api:
        data_dir = _data_dir()
        if not url:
            url = RunFiles(data_dir).read_endpoints().get("http_url")
        if not url:
            fail("no labfleet to talk to: give --url (or LABFLEET_URL), or start one here "
                 "with `labfleet up`")
        if not token:
            token = _local_credentials(data_dir).get("api_token")
        if not token:
            fail(f"no API token: give --token (or LABFLEET_TOKEN); `labfleet up` writes the "
                 f"admin's token to {data_dir / CREDENTIALS_FILE}")
        return cls(url.rstrip("/"), token)

    def client(self, timeout: float | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout or self.timeout,
                            headers={"Authorization": f"Bearer {self.token}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.client() as client:
            try:
                response = client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                fail(f"cannot reach labfleet at {self.url}: {exc} — is it running "
                     "(`labfleet up`) and is --url right?")
        check(response, self.url)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def check(response: httpx.Response, url: str) -> None:
    if response.is_success:
        return
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    if response.status_code == 401:
        fail(f"labfleet at {url} refused the token ({error.get('message', 'unauthorized')}) "
             "— give a valid one with --token or LABFLEET_TOKEN")
    message = error.get("message") or response.text[:300] or response.reason_phrase
    code = error.get("code", str(response.status_code))
    text = f"{code}: {message}"
    if error.get("hint"):
        text += f"\n  what to do: {error['hint']}"
    details = error.get("details") or {}
    if details.get("alternatives"):
        text += f"\n  servers that would do: {', '.join(details['alternatives'])}"
    fail(text)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def run(fn: Any) -> Any:
    """Decorator-free wrapper: turn a CliError into stderr and exit 1."""
    try:
        return fn()
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def labels(pairs: list[str]) -> dict[str, str]:
    """``--label key=value`` options as a mapping; a malformed one stops with its text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"label {pair!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def ssh_secret(key: Path | None, password_env: str | None) -> dict[str, str]:
    """The registration's SSH secret: the private key file's text, or the password held
    by the named environment variable (never a password on the command line)."""
    if key is not None:
        try:
            return {"private_key": key.read_text()}
        except OSError as exc:
            fail(f"cannot read the private key {key}: {exc.strerror}")
    if password_env:
        if password_env not in os.environ:
            fail(f"the environment variable {password_env} is not set")
        return {"password": os.environ[password_env]}
    fail("give --key FILE (preferred) or --password-env VAR")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def stdout_binary() -> Any:
    return sys.stdout.buffer
