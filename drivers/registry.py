"""Device kind -> driver class. The one place that knows every kind."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pydantic import ValidationError

from drivers.base import Driver, Emit

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig, SiteConfig

# Module paths, imported lazily so a gateway without BLE never imports bleak.
_DRIVERS: dict[str, str] = {
    "barrier_gate": "drivers.barrier_gate:BarrierGateDriver",
}


def driver_class(kind: str) -> type[Driver]:
    try:
        path = _DRIVERS[kind]
    except KeyError:
        raise LookupError(f"no driver for device kind {kind!r}; known: {', '.join(sorted(_DRIVERS))}") from None
    module, _, name = path.partition(":")
    cls: type[Driver] = getattr(importlib.import_module(module), name)
    return cls


def create_driver(config: DeviceConfig, hub: TransportHub, emit: Emit) -> Driver:
    return driver_class(config.kind)(config, hub, emit)


def validate_device_options(site: SiteConfig) -> list[str]:
    """Check each device's kind-specific options and transport against its driver; list problems."""
    problems: list[str] = []
    for i, dev in enumerate(site.devices):
        try:
            cls = driver_class(dev.kind)
        except LookupError as exc:
            problems.append(f"devices[{i}].kind: {exc}")
            continue
        try:
            cls.Options.model_validate(dev.options)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"])
                msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"devices[{i}].options.{where}: {msg} (device {dev.id!r})")
        check = getattr(cls, "check_config", None)
        if check is not None:
            problems.extend(f"devices[{i}]: {p} (device {dev.id!r})" for p in check(dev))
    return problems
