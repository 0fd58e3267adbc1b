"""Jinja2 environment of the pages, with the few filters they need."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates

from .csrf import csrf_field_global, csrf_token_global

TEMPLATES = Path(__file__).parent / "templates"
VENDOR = Path(__file__).parent / "static" / "vendor"


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.filters["human_bytes"] = human_bytes
    env.filters["ago"] = ago
    env.filters["pct"] = pct
    # every form's CSRF field: {{ csrf_field() }} (see csrf.py)
    env.globals["csrf_field"] = csrf_field_global
    env.globals["csrf_token"] = csrf_token_global
    env.globals["htmx_installed"] = (VENDOR / "htmx.min.js").exists()
    return templates
