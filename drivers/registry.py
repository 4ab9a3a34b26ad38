"""Device kind -> driver class. The one place that knows every kind."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pydantic import ValidationError

from drivers.base import Driver, Emit

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig, SiteConfig

# (kind, transport family) -> module path, imported lazily so a gateway without BLE never imports bleak.
_DRIVERS: dict[tuple[str, str], str] = {
    ("barrier_gate", "modbus"): "drivers.barrier_gate:BarrierGateDriver",
    ("door_access", "modbus"): "drivers.door_access_modbus:ModbusDoorDriver",
    ("door_access", "mqtt"): "drivers.door_access:MqttDoorDriver",
    ("smart_meter", "modbus"): "drivers.smart_meter:SmartMeterDriver",
    ("fire_panel", "modbus"): "drivers.fire_panel:FirePanelDriver",
    ("video_intercom", "mqtt"): "drivers.video_intercom:IntercomDriver",
    ("ble_sensor", "ble"): "drivers.ble_sensor:BleSensorDriver",
}


def transport_family(transport_type: str) -> str:
    return "modbus" if transport_type.startswith("modbus") else transport_type


def driver_class(kind: str, transport_type: str = "modbus_tcp") -> type[Driver]:
    family = transport_family(transport_type)
    try:
        path = _DRIVERS[(kind, family)]
    except KeyError:
        known = ", ".join(f"{k} over {f}" for k, f in sorted(_DRIVERS))
        raise LookupError(f"no driver for {kind!r} over {family}; known: {known}") from None
    module, _, name = path.partition(":")
    try:
        cls: type[Driver] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"the driver for {kind!r} over {family} cannot be loaded: {exc}") from exc
    return cls


def create_driver(config: DeviceConfig, hub: TransportHub, emit: Emit) -> Driver:
    return driver_class(config.kind, config.transport.type)(config, hub, emit)


def validate_device_options(site: SiteConfig) -> list[str]:
    """Check each device's kind-specific options and transport against its driver; list problems."""
    problems: list[str] = []
    for i, dev in enumerate(site.devices):
        try:
            cls = driver_class(dev.kind, dev.transport.type)
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
