"""Why a request to the inventory was refused, said so that the admin can act on it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from labfleet.shared.events.envelope import ErrorInfo


@dataclass
class InventoryRefusal(Exception):
    """A request the inventory will not carry out; becomes an ``ErrorInfo`` in the reply."""

    code: str
    message: str
    hint: str | None = None
    #: the input field the refusal is about (named as in the command)
    field: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def as_error(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, hint=self.hint, field=self.field,
                         details=self.details)


def not_found(resource_id: object) -> InventoryRefusal:
    return InventoryRefusal(
        "not_found", f"no resource with id {resource_id} is registered",
        hint="list the resources to find its id; it may have been removed",
        field="resource_id")
