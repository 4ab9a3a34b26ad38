"""A door behind a Modbus I/O module with a Wiegand reader interface (map in drivers/door_access_modbus.py).

The lock relay (coil 0) is whatever the gateway last wrote, unless ``relay_fault`` is set: then
the relay stays where it was, as a welded or disconnected relay would, and only a read-back shows
it. Scripting: :meth:`present_card`, :meth:`present_raw` (any frame, e.g. with bad parity),
:meth:`enter_pin`, :meth:`open_door`, :meth:`close_door`, :meth:`press_exit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from drivers.transports import codec
from drivers.wiegand import build_wiegand
from simulators.base import Simulator
from simulators.modbus_server import ModbusSimServer, SimUnit, TableName
from steward.config import DeviceConfig

__all__ = ["ModbusDoorSimulator"]

COIL_LOCK = 0
DI_DOOR, DI_EXIT = 0, 1
HR_CARD_SEQ, HR_CARD_BITS, HR_CARD_RAW = 0, 1, 2
HR_PIN_SEQ, HR_PIN = 6, 7
HR_EXIT_COUNT = 9

log = structlog.get_logger("steward.sim.door_access")


class ModbusDoorSimulator(Simulator):
    kind = "door_access"

    def __init__(
        self,
        unit: int = 1,
        *,
        server: ModbusSimServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        device: DeviceConfig | None = None,
    ) -> None:
        del device  # nothing in the config changes how the module behaves
        self._owns_server = server is None
        self.server = server if server is not None else ModbusSimServer(host, port)
        self.unit = self.server.add_unit(SimUnit(unit, size=64, on_write=self._on_write))
        self.relay_fault = False
        # (monotonic time, released) for every relay change the gateway made, for tests.
        self.relay_history: list[tuple[float, bool]] = []
        self.last_card: dict[str, int] | None = None
        self._relay_changed = asyncio.Event()
        self._exit_release: asyncio.Task[None] | None = None
        self.log = log.bind(unit=unit)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._owns_server:
            await self.server.start()

    async def stop(self) -> None:
        task, self._exit_release = self._exit_release, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_server:
            await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def released(self) -> bool:
        return self.unit.get_bit("coils", COIL_LOCK)

    @property
    def door_open(self) -> bool:
        return self.unit.get_bit("discrete", DI_DOOR)

    def state(self) -> dict[str, Any]:
        return {
            "lock_released": self.released,
            "door_open": self.door_open,
            "exit_pressed": self.unit.get_bit("discrete", DI_EXIT),
            "last_card": self.last_card,
            "card_seq": self.unit.get("holding", HR_CARD_SEQ)[0],
            "relay_fault": self.relay_fault,
        }

    # ------------------------------------------------------------------ scripting

    def present_card(self, facility: int, card: int, bits: int = 26) -> int:
        """A card read with a valid frame; returns the raw frame value."""
        raw = build_wiegand(facility, card, bits)
        self.present_raw(raw, bits)
        self.last_card = {"facility": facility, "card": card, "bits": bits, "raw": raw}
        return raw

    def present_raw(self, value: int, bits: int) -> None:
        """Any frame, e.g. one with a parity error; the sequence counter moves last, as on the module."""
        self.unit.set("holding", HR_CARD_BITS, bits)
        self.unit.set("holding", HR_CARD_RAW, codec.encode(value, "uint64"))
        self.last_card = {"bits": bits, "raw": value}
        self._bump(HR_CARD_SEQ)

    def enter_pin(self, pin: int) -> None:
        self.unit.set("holding", HR_PIN, codec.encode(pin, "uint32"))
        self._bump(HR_PIN_SEQ)

    def open_door(self) -> None:
        self.unit.set_bit("discrete", DI_DOOR, True)

    def close_door(self) -> None:
        self.unit.set_bit("discrete", DI_DOOR, False)

    def press_exit(self, hold_s: float = 0.2) -> None:
        """Press the request-to-exit button for ``hold_s`` (the press counter moves at once)."""
        self.unit.set_bit("discrete", DI_EXIT, True)
        self._bump(HR_EXIT_COUNT)
        if self._exit_release is not None:
            self._exit_release.cancel()
        self._exit_release = asyncio.get_running_loop().create_task(self._let_go(hold_s), name="exit-button")

    async def _let_go(self, hold_s: float) -> None:
        await asyncio.sleep(hold_s)
        self.unit.set_bit("discrete", DI_EXIT, False)
        self._exit_release = None

    def _bump(self, register: int) -> None:
        self.unit.set("holding", register, (self.unit.get("holding", register)[0] + 1) % 65536)

    # ------------------------------------------------------------------ behaviour

    def _on_write(self, table: TableName, address: int, values: list[int] | list[bool]) -> None:
        if table != "coils" or not address <= COIL_LOCK < address + len(values):
            return
        wanted = bool(values[COIL_LOCK - address])
        if self.relay_fault:
            # The module accepts and echoes the write, then the relay drops back: only a read-back
            # shows it. call_soon runs after this request's reply has been built.
            previous = self.relay_history[-1][1] if self.relay_history else False
            asyncio.get_running_loop().call_soon(self.unit.set_bit, "coils", COIL_LOCK, previous)
            self.log.info("relay fault: coil write will not hold", wanted=wanted)
            return
        if not self.relay_history or self.relay_history[-1][1] != wanted:
            self.relay_history.append((time.monotonic(), wanted))
            self._relay_changed.set()

    async def wait_relay(self, released: bool) -> None:
        """Until the gateway has set the relay to ``released`` (wrap in a timeout)."""
        while self.released != released:
            self._relay_changed.clear()
            await self._relay_changed.wait()
