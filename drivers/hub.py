"""The gateway's shared transports: one Modbus connection per bus, one MQTT client, one BLE scanner.

Drivers borrow from here and never open connections of their own, so two devices on one RS-485
line share one serialised client and a slow bus never blocks another.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.transports.modbus import ModbusBus
    from steward.config import ModbusRtuTransport, ModbusTcpTransport
    from steward.mqtt import MqttClient


class TransportHub:
    def __init__(self, mqtt: MqttClient | None = None, ble: Any = None) -> None:
        self._mqtt = mqtt
        self._ble = ble
        self._buses: dict[str, ModbusBus] = {}

    def modbus(self, transport: ModbusTcpTransport | ModbusRtuTransport) -> ModbusBus:
        from drivers.transports.modbus import ModbusBus

        bus = self._buses.get(transport.bus)
        if bus is None:
            bus = self._buses[transport.bus] = ModbusBus(transport)
        return bus

    @property
    def buses(self) -> dict[str, ModbusBus]:
        return dict(self._buses)

    @property
    def mqtt(self) -> MqttClient:
        if self._mqtt is None:
            raise RuntimeError("this gateway has no MQTT device bus configured")
        return self._mqtt

    @property
    def ble(self) -> Any:
        if self._ble is None:
            raise RuntimeError("this gateway has no BLE scanner configured")
        return self._ble

    async def close(self) -> None:
        async with asyncio.timeout(10):
            for bus in self._buses.values():
                await bus.close()
        self._buses.clear()
