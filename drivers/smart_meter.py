"""Smart meters (electricity, water) over Modbus, driven by register tables.

The model (``DeviceConfig.model``) picks a table from :mod:`drivers.meter_models`; model
``generic`` takes its table from ``options.points`` so a new meter is configuration. Every poll
reports ``meter.reading`` with all values; ``meter.tamper`` is raised once per rise of a tamper
bit and whenever a point that must not grow (reverse volume) grows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.base import Driver, Emit, Reading
from drivers.meter_models import METER_MODELS
from drivers.points import Point, check_points, compile_points, read_plan
from drivers.transports import codec
from steward.config import ModbusRtuTransport, ModbusTcpTransport

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig

__all__ = ["SmartMeterDriver", "SmartMeterOptions", "StatusRegister"]


class StatusRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    bits: dict[int, str] = Field(description="bit number -> flag name")


class SmartMeterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[Point] = Field(default_factory=list, description="Register table for model 'generic'")
    status: StatusRegister | None = None
    tamper_increase: list[str] = Field(default_factory=list, description="Points that must never increase")
    tamper_bits: list[str] = Field(default_factory=list, description="Status flags that mean tampering")


def _table_for(model: str, options: SmartMeterOptions) -> SmartMeterOptions:
    """The effective table: the built-in model's, or the options' for 'generic'."""
    if model == "generic":
        return options
    table = METER_MODELS[model]
    return SmartMeterOptions.model_validate(
        {
            "points": table["points"],
            "status": table.get("status"),
            "tamper_increase": [*table.get("tamper_increase", []), *options.tamper_increase],
            "tamper_bits": [*table.get("tamper_bits", []), *options.tamper_bits],
        }
    )


class SmartMeterDriver(Driver):
    kind: ClassVar[str] = "smart_meter"
    Options: ClassVar[type[BaseModel]] = SmartMeterOptions

    def __init__(self, config: DeviceConfig, hub: TransportHub, emit: Emit) -> None:
        super().__init__(config, hub, emit)
        t = config.transport
        if not isinstance(t, ModbusTcpTransport | ModbusRtuTransport):
            raise TypeError(f"{config.id}: smart_meter needs a Modbus transport")
        self.unit = t.unit
        self.bus = hub.modbus(t)
        self.table = _table_for(config.model, self.options)
        # The table is fixed for the driver's life: plan its reads and decoders once, not every poll.
        self._plan = compile_points(self.table.points)
        self._units = {p.name: p.unit for p in self.table.points}
        self._last: dict[str, float | int] = {}
        self._flags: dict[str, bool] = {}

    @classmethod
    def check_config(cls, dev: DeviceConfig) -> list[str]:
        if dev.model != "generic" and dev.model not in METER_MODELS:
            known = ", ".join(["generic", *sorted(METER_MODELS)])
            return [f"model: unknown meter model {dev.model!r}; known: {known}"]
        try:
            options = SmartMeterOptions.model_validate(dev.options)
        except ValidationError:
            return []  # the registry reports option errors field by field
        if dev.model == "generic" and not options.points:
            return ["options.points: a generic meter needs its register table in options.points"]
        table = _table_for(dev.model, options)
        problems = [f"options.points: {p}" for p in check_points(table.points)]
        names = {p.name for p in table.points}
        problems += [
            f"options.tamper_increase: no point {n!r}" for n in table.tamper_increase if n not in names
        ]
        flags = set(table.status.bits.values()) if table.status else set()
        problems += [
            f"options.tamper_bits: no status flag {n!r}" for n in table.tamper_bits if n not in flags
        ]
        return problems

    async def poll(self) -> list[Reading]:
        values = await read_plan(self.bus, self.unit, self._plan, self.device_id)
        flags: dict[str, bool] = {}
        status = self.table.status
        if status is not None:
            reader = self.bus.read_holding if status.table == "holding" else self.bus.read_input
            (raw,) = await reader(self.unit, status.address, 1, self.device_id)
            flags = {name: codec.get_bit(raw, bit) for bit, name in status.bits.items()}
        data: dict[str, Any] = {
            "model": self.config.model,
            "values": values,
            "units": dict(self._units),  # a copy: the reading leaves the driver
        }
        if flags:
            data["status"] = flags
        out = [Reading("meter.reading", data)]
        for name in self.table.tamper_increase:
            before, now = self._last.get(name), values.get(name)
            if before is not None and now is not None and now > before:
                out.append(
                    Reading("meter.tamper", {"reason": f"{name} increased", "from": before, "to": now})
                )
        for name in self.table.tamper_bits:
            if flags.get(name) and not self._flags.get(name):
                out.append(Reading("meter.tamper", {"reason": name}))
        for r in out[1:]:
            self.log.warning("meter tamper", reason=r.data["reason"])
        self._last, self._flags = values, flags
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"values": dict(self._last), "status": dict(self._flags)}
