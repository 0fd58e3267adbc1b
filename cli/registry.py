"""Which services labfleet has, and how to load one.

Every service module is ``labfleet.<name>.main`` with ``create(settings) -> Service``.
The list below is the whole set; a service whose module is not there (yet) is reported as
unavailable and skipped by ``labfleet up`` rather than replaced by a stand-in.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from labfleet.shared.service import Service
from labfleet.shared.settings import Settings

#: start order for ``labfleet up``: owners of state first, the gateway (which shows the
#: others' liveness) last
SERVICE_NAMES: tuple[str, ...] = (
    "inventory",
    "monitor",
    "scheduler",
    "builder",
    "deployer",
    "alerter",
    "pipeline",
    "gateway",
)

ServiceFactory = Callable[[Settings], Service]


class UnknownService(LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"unknown service {name!r}: valid names are {', '.join(SERVICE_NAMES)} "
            "(`labfleet services` shows which are available)"
        )


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    factory: ServiceFactory | None
    #: why the service cannot be started; None when it can
    problem: str | None = None

    @property
    def available(self) -> bool:
        return self.factory is not None


def load_service(name: str) -> ServiceEntry:
    """Import ``labfleet.<name>.main`` and return its ``create``, or why that failed."""
    if name not in SERVICE_NAMES:
        raise UnknownService(name)
    module_name = f"labfleet.{name}.main"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in (module_name, f"labfleet.{name}"):
            return ServiceEntry(name, None, f"not built yet: there is no {module_name}")
        return ServiceEntry(name, None, f"{module_name} cannot be imported: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken module is reported, not fatal to the rest
        return ServiceEntry(name, None,
                            f"{module_name} cannot be imported: {type(exc).__name__}: {exc}")
    factory = getattr(module, "create", None)
    if not callable(factory):
        return ServiceEntry(name, None, f"{module_name} has no create(settings) function")
    return ServiceEntry(name, factory)


def is_present(name: str) -> bool:
    """Whether ``labfleet.<name>.main`` exists, without importing it."""
    try:
        return importlib.util.find_spec(f"labfleet.{name}.main") is not None
    except ModuleNotFoundError:
        return False


def load_all() -> list[ServiceEntry]:
    return [load_service(name) for name in SERVICE_NAMES]
