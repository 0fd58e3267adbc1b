"""The service registry: names, unknown names, services not built."""
from __future__ import annotations

from pathlib import Path

import pytest

from labfleet.cli.registry import SERVICE_NAMES, UnknownService, load_service

ROOT = Path(__file__).resolve().parents[2]


def test_every_service_folder_is_registered_and_nothing_else() -> None:
    folders = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    assert set(SERVICE_NAMES) == folders
    assert SERVICE_NAMES[-1] == "gateway"  # started last: it reports the others' liveness


def test_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownService) as caught:
        load_service("schedular")
    message = str(caught.value)
    assert "'schedular'" in message
    for name in SERVICE_NAMES:
        assert name in message


def test_each_registered_service_loads_or_says_why_not() -> None:
    for name in SERVICE_NAMES:
        entry = load_service(name)
        if entry.available:
            assert callable(entry.factory) and entry.problem is None
        else:
            assert entry.factory is None
            assert f"labfleet.{name}.main" in (entry.problem or "")
