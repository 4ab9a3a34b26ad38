"""Cloud features beyond the core (ingest, registry, commands): each a package with a ``feature`` module.

A feature module may define:

``install(app: FastAPI) -> None``            add its routers
``setup(services: Services) -> None``         register ingest listeners/handlers, stash its services
``async run(services: Services) -> None``     a background loop, run in the app's TaskGroup

Keeping them apart lets work orders, accounts, credentials and the console grow without one module
owning two stages of the flow.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FEATURES = ("cloud.auth", "cloud.workorders", "cloud.access", "cloud.commissioning", "cloud.console")


def load_features() -> list[ModuleType]:
    modules: list[ModuleType] = []
    for package in FEATURES:
        name = f"{package}.feature"
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name in (package, name):
                continue  # not built (yet); an import error inside a feature still fails loudly
            raise
    return modules
