"""A smart meter that serves a register table from drivers.meter_models with plausible values.

``set(name, value)`` writes a point through the codec, so the simulator and the driver share one
description of the meter and cannot disagree about addresses or byte order.
"""

from __future__ import annotations

from typing import Any

from drivers.meter_models import METER_MODELS
from drivers.points import Point
from drivers.transports import codec
from simulators.base import Simulator
from simulators.modbus_server import ModbusSimServer, SimUnit
from steward.config import DeviceConfig

__all__ = ["SmartMeterSimulator"]

_DEFAULTS = {
    "voltage": 230.0,
    "current": 4.2,
    "power": 950.0,
    "frequency_hz": 50.0,
    "power_factor": 0.98,
    "energy_import_kwh": 1234.5,
    "volume_forward_m3": 321.25,
    "flow_m3h": 0.6,
}


class SmartMeterSimulator(Simulator):
    kind = "smart_meter"
    takes_device_config = True

    def __init__(
        self,
        unit: int = 1,
        *,
        model: str = "sdm120",
        device: DeviceConfig | None = None,
        server: ModbusSimServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if device is not None:
            model = device.model
        if model == "generic":
            raw = device.options.get("points", []) if device is not None else []
            specs: list[Any] = list(raw) if isinstance(raw, list) else []
            status = device.options.get("status") if device is not None else None
        else:
            specs, status = METER_MODELS[model]["points"], METER_MODELS[model].get("status")
        self.model = model
        self.points = {p.name: p for p in (Point.model_validate(s) for s in specs)}
        self.status = status if isinstance(status, dict) else None
        self._owns = server is None
        self.server = server if server is not None else ModbusSimServer(host, port)
        self.unit = self.server.add_unit(SimUnit(unit))
        self.values: dict[str, float] = {}
        for name in self.points:
            default = next((v for k, v in _DEFAULTS.items() if name.startswith(k)), 0.0)
            # The DDSU666 reports kW: the table scales by 1000, so store W and let set() convert.
            self.set(name, default)
        self.set_status(0)

    def set(self, name: str, value: float) -> None:
        p = self.points[name]
        self.values[name] = value
        self.unit.set(p.table, p.address, codec.encode(value, p.type, p.order, p.scale, p.offset))

    def add(self, name: str, delta: float) -> None:
        self.set(name, self.values[name] + delta)

    def set_status(self, raw: int) -> None:
        if self.status is not None:
            self.unit.set(self.status.get("table", "holding"), int(self.status["address"]), raw)

    def set_flag(self, flag: str, on: bool) -> None:
        if self.status is None:
            raise KeyError(f"model {self.model} has no status register")
        bits = {str(name): int(bit) for bit, name in self.status["bits"].items()}
        address = int(self.status["address"])
        (raw,) = self.unit.get(self.status.get("table", "holding"), address)
        self.set_status(codec.set_bits(raw, bits[flag], 1, int(on)))

    async def start(self) -> None:
        if self._owns:
            await self.server.start()

    async def stop(self) -> None:
        if self._owns:
            await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def state(self) -> dict[str, Any]:
        return {"model": self.model, "values": dict(self.values)}
