"""A Modbus TCP (or RTU) server hosting several simulated units on one port, like a real bus.

pymodbus provides the framing and the listener; the register tables are ours (:class:`SimUnit`),
so each simulator's behaviour code reads and writes plain Python lists and gets a callback on
every write from the client. Each unit can be switched into a failure mode for fault tests:

``ok``         answers normally
``dead``       never answers (the client times out), like a unit that lost power on RS-485
``exception``  answers every request with a Modbus exception code (default 4, device failure)
``garbage``    answers with well-framed nonsense: reads return the wrong number of values and
               single writes echo a different value, so only a client that checks replies notices
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice

from steward.net import free_port

__all__ = ["ModbusSimServer", "SimUnit", "UnitMode", "WriteHook", "free_port"]

UnitMode = Literal["ok", "dead", "exception", "garbage"]
TableName = Literal["coils", "discrete", "holding", "input"]
# (table, address, values) after the client's write has been stored.
WriteHook = Callable[[TableName, int, list[int] | list[bool]], None]

_FC_TABLE: dict[int, TableName] = {1: "coils", 5: "coils", 15: "coils", 2: "discrete", 4: "input"}
_FC_TABLE.update(dict.fromkeys((3, 6, 16, 22, 23), "holding"))

log = structlog.get_logger("steward.sim.modbus")


class SimUnit:
    """The four register tables of one Modbus unit, sparse (unset addresses read as 0).

    ``size`` bounds each table: requests beyond it get exception 2 (illegal data address), as a
    real device does outside its map.
    """

    def __init__(self, unit: int, *, size: int = 65536, on_write: WriteHook | None = None) -> None:
        if not 0 <= unit <= 247:
            raise ValueError(f"unit id {unit} is outside 0..247")
        self.unit = unit
        self.size = size
        self.tables: dict[TableName, dict[int, int]] = {
            "coils": {},
            "discrete": {},
            "holding": {},
            "input": {},
        }
        self.on_write = on_write
        self.mode: UnitMode = "ok"
        self.exception_code = ExcCodes.DEVICE_FAILURE
        self.requests = 0

    # Behaviour code uses these; they never fail on mode (the device's inside still works).
    def get(self, table: TableName, address: int, count: int = 1) -> list[int]:
        t = self.tables[table]
        return [t.get(a, 0) for a in range(address, address + count)]

    def set(self, table: TableName, address: int, values: Sequence[int | bool] | int | bool) -> None:
        if isinstance(values, int | bool):
            values = [values]
        t = self.tables[table]
        bits = table in ("coils", "discrete")
        for i, v in enumerate(values):
            if not bits and not 0 <= int(v) <= 0xFFFF:
                raise ValueError(f"{int(v)} is not a 16-bit register value")
            t[address + i] = int(bool(v)) if bits else int(v)

    def get_bit(self, table: Literal["coils", "discrete"], address: int) -> bool:
        return bool(self.tables[table].get(address, 0))

    def set_bit(self, table: Literal["coils", "discrete"], address: int, value: bool) -> None:
        self.tables[table][address] = int(bool(value))

    # ------------------------------------------------------------------ server side

    def _check(self, func_code: int, address: int, count: int) -> TableName | ExcCodes:
        self.requests += 1
        if self.mode == "dead":
            # pymodbus stays silent for unknown ids when ignore_missing_devices is set.
            raise NoSuchIdException(f"unit {self.unit} is simulated dead")
        if self.mode == "exception":
            return self.exception_code
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or address + count > self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        return table

    def read(self, func_code: int, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        table = self._check(func_code, address, count)
        if isinstance(table, ExcCodes):
            return table
        values = self.get(table, address, count)
        if self.mode == "garbage":
            values = [v ^ 0xA5A5 for v in values[: max(0, count - 1)]] if count > 1 else [0x5A5A, 0x5A5A]
            if table in ("coils", "discrete"):
                return [True] * (count + 8)
        if table in ("coils", "discrete"):
            return [bool(v) for v in values]
        return values

    def write(self, func_code: int, address: int, values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        table = self._check(func_code, address, len(values))
        if isinstance(table, ExcCodes):
            return table
        if table in ("discrete", "input"):
            return ExcCodes.ILLEGAL_FUNCTION
        if self.mode == "garbage":
            # Store the inverse, so the echo of a single write disagrees with what was sent.
            inverted = [(not v) if table == "coils" else (int(v) ^ 0xFFFF) for v in values]
            self.set(table, address, inverted)
            return None
        self.set(table, address, list(values))
        if self.on_write is not None:
            try:
                self.on_write(table, address, list(values))
            except Exception:
                # A bug in behaviour code must not take the whole server down.
                log.exception("simulator write hook failed", unit=self.unit, table=table, address=address)
        return None


class _Context:
    """What pymodbus' request handler calls; routes each request to the addressed SimUnit."""

    def __init__(self, units: dict[int, SimUnit]) -> None:
        self.units = units

    def _unit(self, device_id: int) -> SimUnit:
        unit = self.units.get(device_id)
        if unit is None:
            raise NoSuchIdException(f"no unit {device_id}")
        return unit

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return self._unit(device_id).read(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        return self._unit(device_id).write(func_code, address, values)


class ModbusSimServer:
    """Hosts units on one TCP port (``port=0`` picks a free one) or one serial port (``serial=``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        serial: str | None = None,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        self.host = host
        self._port = port
        self.serial = serial
        self._serial_params: dict[str, Any] = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self.units: dict[int, SimUnit] = {}
        self._context = _Context(self.units)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def add_unit(self, unit: SimUnit) -> SimUnit:
        if unit.unit in self.units:
            raise ValueError(f"unit {unit.unit} already on this server")
        self.units[unit.unit] = unit
        return unit

    def unit(self, unit_id: int) -> SimUnit:
        return self.units[unit_id]

    @property
    def port(self) -> int:
        """The bound TCP port (the real one after start() when constructed with port=0)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        # pymodbus wants a datastore at construction; ours replaces it right after.
        placeholder = SimDevice(0, simdata=SimData(0))
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial is not None:
            server = ModbusSerialServer(
                placeholder,
                framer=FramerType.RTU,
                port=self.serial,
                ignore_missing_devices=True,
                **self._serial_params,
            )
        else:
            server = ModbusTcpServer(
                placeholder, address=(self.host, self._port), ignore_missing_devices=True
            )
        server.context = self._context  # type: ignore[assignment]
        await server.serve_forever(background=True)
        if self.serial is None:
            listener = server.transport
            sockets = getattr(listener, "sockets", None)
            if sockets:
                self._port = int(sockets[0].getsockname()[1])
        self._server = server
        log.debug("modbus simulator listening", address=self.address, units=sorted(self.units))

    @property
    def address(self) -> str:
        return self.serial if self.serial is not None else f"{self.host}:{self._port}"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves shutdown() unannotated
        # Let the transports' close callbacks run so no socket outlives the test.
        await asyncio.sleep(0)

    async def __aenter__(self) -> ModbusSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
