"""What the pages' forms share: lists typed into a text field, and, for the build-server
and QEMU-host registration forms, labels, the SSH secret and refusals beside their fields."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from ..domain.errors import ApiError

#: never echoed back into a page
SECRET_FIELDS = ("password", "private_key")


def empty_form() -> dict[str, Any]:
    return {"values": {"ssh_port": "22", "auth": "key"}, "errors": {}, "registered": None}


def split_list(text: str) -> list[str]:
    """Items of a text field, one per line or comma-separated."""
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


def form_labels(values: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in split_list(values.get("labels", "")):
        key, _, value = pair.partition("=")
        labels[key.strip()] = value.strip()
    return labels


def form_secret(values: dict[str, Any]) -> dict[str, str | None]:
    """The chosen way to log in: the other field is ignored even if it was filled in."""
    use_key = values.get("auth") != "password"
    return {"password": None if use_key else (values.get("password") or None),
            "private_key": (values.get("private_key") or None) if use_key else None}


async def submit_registration(register: Callable[[], Awaitable[Any]],
                              values: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """The form after registering: what was registered, or the errors by form field
    (``_form`` for what belongs to no field) with the values to show again, without the
    secrets; an accepted form starts empty again."""
    errors: dict[str, str] = {}
    registered = None
    try:
        registered = await register()
    except ValidationError as exc:
        for e in exc.errors():
            field = str(e["loc"][0]) if e["loc"] else "_form"
            errors.setdefault(field if field in fields else "_form",
                              str(e["msg"]).removeprefix("Value error, "))
    except ApiError as exc:
        text = exc.message + (f" — {exc.hint}" if exc.hint else "")
        field = exc.field if exc.field in fields else "_form"
        if field == "password" and values.get("auth") != "password":
            field = "private_key"  # a refused key login: the field that was used
        errors[field] = text
    safe = {k: v for k, v in values.items() if k not in SECRET_FIELDS}
    return {"values": safe if errors else empty_form()["values"], "errors": errors,
            "registered": registered}
