"""A fire panel's Modbus gateway (register map in drivers/fire_panel.py), scriptable per zone."""

from __future__ import annotations

from typing import Any

from drivers.fire_panel import PANEL_BITS, UNPROGRAMMED, ZONE_BITS
from simulators.base import Simulator
from simulators.modbus_server import ModbusSimServer, SimUnit
from steward.config import DeviceConfig

__all__ = ["FirePanelSimulator"]

_ZONE = {name: bit for bit, name in ZONE_BITS.items()}
_PANEL = {name: bit for bit, name in PANEL_BITS.items()}
_DETECTOR = 0x01  # low byte: device type (1 = smoke detector), informational


class FirePanelSimulator(Simulator):
    kind = "fire_panel"
    takes_device_config = True

    def __init__(
        self,
        unit: int = 1,
        *,
        zones: int = 16,
        zone_base: int = 100,
        status_register: int = 0,
        device: DeviceConfig | None = None,
        server: ModbusSimServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if device is not None:
            zones = int(device.options.get("zones", zones))  # type: ignore[arg-type]
            zone_base = int(device.options.get("zone_base", zone_base))  # type: ignore[arg-type]
            status_register = int(device.options.get("status_register", status_register))  # type: ignore[arg-type]
        self.zones, self.zone_base, self.status_register = zones, zone_base, status_register
        self._owns = server is None
        self.server = server if server is not None else ModbusSimServer(host, port)
        self.unit = self.server.add_unit(SimUnit(unit))
        for z in range(1, zones + 1):
            self._write(z, 1 << _ZONE["enabled"] | _DETECTOR)
        self.unit.set("holding", status_register, 0)

    def _reg(self, zone: int) -> int:
        if not 1 <= zone <= self.zones:
            raise ValueError(f"zone {zone} is not 1..{self.zones}")
        return self.zone_base + zone - 1

    def _read(self, zone: int) -> int:
        return self.unit.get("holding", self._reg(zone))[0]

    def _write(self, zone: int, raw: int) -> None:
        self.unit.set("holding", self._reg(zone), raw)

    def _flag(self, zone: int, name: str, on: bool) -> None:
        raw = self._read(zone)
        if raw == UNPROGRAMMED:
            raise ValueError(f"zone {zone} is unprogrammed")
        bit = 1 << _ZONE[name]
        self._write(zone, raw | bit if on else raw & ~bit)

    def alarm(self, zone: int) -> None:
        self._flag(zone, "alarm", True)
        self._flag(zone, "active", True)
        self._flag(zone, "acked", False)

    def prealarm(self, zone: int) -> None:
        self._flag(zone, "prealarm", True)

    def trouble(self, zone: int) -> None:
        self._flag(zone, "trouble", True)

    def acknowledge(self, zone: int) -> None:
        self._flag(zone, "acked", True)

    def restore(self, zone: int) -> None:
        for name in ("alarm", "prealarm", "trouble", "active", "acked"):
            self._flag(zone, name, False)

    def unprogram(self, zone: int) -> None:
        self._write(zone, UNPROGRAMMED)

    def panel(self, condition: str, on: bool = True) -> None:
        """Set a panel status bit: mains_fail, battery_fault, silenced, reset, earth_fault."""
        (raw,) = self.unit.get("holding", self.status_register)
        bit = 1 << _PANEL[condition]
        self.unit.set("holding", self.status_register, raw | bit if on else raw & ~bit)

    def reset(self) -> None:
        """Panel reset: every zone back to normal (as after a reset key press)."""
        for z in range(1, self.zones + 1):
            if self._read(z) != UNPROGRAMMED:
                self.restore(z)

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
        zones = {}
        for z in range(1, self.zones + 1):
            raw = self._read(z)
            if raw != UNPROGRAMMED:
                on = [n for b, n in ZONE_BITS.items() if raw >> b & 1 and n not in ("enabled", "active")]
                if on:
                    zones[z] = on
        (status,) = self.unit.get("holding", self.status_register)
        return {"zones": zones, "panel": [n for b, n in PANEL_BITS.items() if status >> b & 1]}
