"""One Modbus connection per bus, shared by every device on it.

A bus is a TCP gateway (``tcp://host:port``) or an RS-485 line (``rtu:///dev/ttyUSB0``). Modbus is
one-request-at-a-time per line, so the bus owns one pymodbus client and a lock; drivers for units
on the same bus queue on it while other buses run in parallel. The bus does I/O policy only:
per-request timeout (pymodbus' own reply timeout, ``timeout_s``), bounded retries with backoff
(outside the lock, so one dead unit does not starve its neighbours), reconnecting after the link
drops, and counting what happened.

Errors are mapped onto the drivers' error tree, always naming the device::

    timeout / no link / connect refused      -> DeviceUnreachable
    exception response / wrong-length reply  -> DeviceProtocolError (not retried: the unit answered)
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.base import DeviceProtocolError, DeviceUnreachable
from steward.config import ModbusRtuTransport, ModbusTcpTransport

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "BusStats",
    "ModbusBus",
    "ReadBlock",
    "Table",
    "coalesce",
]

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

Table = Literal["holding", "input", "coils", "discrete"]
# table -> (message template: address, count; pymodbus client method, response attribute, most per request)
_READS: dict[str, tuple[str, str, str, int]] = {
    "holding": ("read holding {}+{}", "read_holding_registers", "registers", MAX_READ_REGISTERS),
    "input": ("read input {}+{}", "read_input_registers", "registers", MAX_READ_REGISTERS),
    "coils": ("read coils {}+{}", "read_coils", "bits", MAX_READ_BITS),
    "discrete": ("read discrete inputs {}+{}", "read_discrete_inputs", "bits", MAX_READ_BITS),
}

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

log = structlog.get_logger("steward.modbus")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering ``count`` registers/bits from ``address``."""

    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count

    def covers(self, address: int, length: int = 1) -> bool:
        return self.address <= address and address + length <= self.end


def coalesce(
    spans: Iterable[int | tuple[int, int]],
    *,
    max_count: int = MAX_READ_REGISTERS,
    max_gap: int = 8,
) -> list[ReadBlock]:
    """Group point addresses into as few reads as possible.

    ``spans`` are addresses or ``(address, length)`` pairs (a float32 is length 2). Neighbours
    merge when the hole between them is at most ``max_gap`` (reading a few unused registers is
    cheaper than another round trip) and the block stays within ``max_count`` (125 registers or
    2000 bits per Modbus read).
    """
    pairs = sorted((s, 1) if isinstance(s, int) else (s[0], s[1]) for s in spans)
    blocks: list[ReadBlock] = []
    for address, length in pairs:
        if length < 1 or length > max_count:
            raise ValueError(f"point at {address} of length {length} cannot be read in one request")
        if blocks:
            last = blocks[-1]
            end = max(last.end, address + length)
            if address - last.end <= max_gap and end - last.address <= max_count:
                blocks[-1] = ReadBlock(last.address, end - last.address)
                continue
        blocks.append(ReadBlock(address, length))
    return blocks


@dataclass(slots=True)
class BusStats:
    """Counters for health reporting; ``requests`` counts frames sent, retries included."""

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    retries: int = 0
    connects: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    per_unit_errors: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "protocol_errors": self.protocol_errors,
            "retries": self.retries,
            "connects": self.connects,
            "last_error": self.last_error,
        }


class _NoAnswer(Exception):
    """Internal: this attempt got no answer (retryable)."""


class ModbusBus:
    """Shared, serialised access to one Modbus TCP gateway or RS-485 line."""

    def __init__(self, transport: ModbusTcpTransport | ModbusRtuTransport) -> None:
        self.transport = transport
        self.key = transport.bus
        self.stats = BusStats()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._rtu = isinstance(transport, ModbusRtuTransport)
        # Modbus RTU wants >= 3.5 character times of silence between frames; some cheap
        # converters need more, hence the floor.
        self._frame_gap = max(0.005, 3.5 * 11 / transport.baudrate) if self._rtu else 0.0  # type: ignore[union-attr]
        self._last_frame = 0.0
        self._failing = False
        self.log = log.bind(bus=self.key)

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        t = self.transport
        # retries=0 and no auto-reconnect: this class owns both policies, so a dead unit's retries
        # happen outside the bus lock and reconnects follow our backoff.
        if isinstance(t, ModbusTcpTransport):
            return AsyncModbusTcpClient(
                t.host, port=t.port, timeout=t.timeout_s, retries=0, reconnect_delay=0, name=self.key
            )
        return AsyncModbusSerialClient(
            t.port,
            framer=FramerType.RTU,
            baudrate=t.baudrate,
            parity=t.parity,
            stopbits=t.stopbits,
            bytesize=t.bytesize,
            timeout=t.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self.key,
        )

    async def _connected_client(self, device_id: str) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._closed:
            raise DeviceUnreachable(device_id, f"bus {self.key} is closed")
        client = self._client
        if client is not None and client.connected:
            return client
        if client is not None:
            client.close()
        client = self._client = self._new_client()
        self.stats.connects += 1
        try:
            async with asyncio.timeout(self.transport.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError):
            ok = False
        if not ok:
            client.close()
            self._client = None
            raise _NoAnswer(f"cannot connect to {self.key}")
        return client

    async def close(self) -> None:
        """Close the link; later requests raise DeviceUnreachable. Safe to call twice."""
        self._closed = True
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def health(self) -> dict[str, Any]:
        return {"bus": self.key, "connected": self.connected, **self.stats.as_dict()}

    # ------------------------------------------------------------------ core request

    async def _request(
        self,
        device_id: str,
        unit: int,
        what: str | tuple[str, int, int],
        call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient], Awaitable[ModbusPDU]],
        check: Callable[[ModbusPDU], str | None] | None = None,
    ) -> ModbusPDU:
        attempts = self.transport.retries + 1
        last_reason = "no answer"
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
                # Backoff outside the lock: other units on the bus get their turn meanwhile.
                await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0))
            try:
                response = await self._attempt(device_id, unit, call)
            except _NoAnswer as exc:
                last_reason = str(exc)
                continue
            if isinstance(response, ExceptionResponse) or response.isError():
                what = _describe(what)
                code = getattr(response, "exception_code", 0)
                name = _EXCEPTION_NAMES.get(code, "unknown")
                raise self._protocol_error(
                    device_id, unit, f"{what}: unit {unit} answered exception {code} ({name})"
                )
            problem = check(response) if check else None
            if problem:
                what = _describe(what)
                raise self._protocol_error(
                    device_id, unit, f"{what}: unit {unit} sent a bad reply: {problem}"
                )
            self._ok()
            return response
        self.stats.errors += 1
        self.stats.per_unit_errors[unit] = self.stats.per_unit_errors.get(unit, 0) + 1
        self.stats.last_error = f"unit {unit}: {last_reason}"
        self._log_failure(device_id, unit, last_reason)
        raise DeviceUnreachable(
            device_id, f"{_describe(what)}: no answer from unit {unit} on {self.key} ({last_reason})"
        )

    async def _attempt(
        self,
        device_id: str,
        unit: int,
        call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                client = await self._connected_client(device_id)
            if self._frame_gap:
                wait = self._last_frame + self._frame_gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self.stats.requests += 1
            try:
                # No timer of ours around this: pymodbus sends synchronously and then waits for the
                # reply with asyncio.wait_for(timeout_s) (TransactionManager.execute, retries=0), so
                # the wait is bounded already (test_dead_unit_times_out_with_bounded_retries fails if
                # it is not). A second timer per request is pure overhead at hundreds of requests a
                # second; the supervisor's per-poll bound and the command timeout stay as backstops.
                response = await call(client)
                # pymodbus waits with asyncio.wait_for, which on Python 3.11 can swallow a cancel that
                # lands as its timeout fires; the caller's loop would then never stop. Re-raise it.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                return response
            except ModbusIOException as exc:
                text = str(exc)
                if "device id" in text or "transaction id" in text:
                    # Answer from the wrong unit or a stale frame: the line is confused, not dead.
                    self.stats.timeouts += 1
                    raise _NoAnswer(f"mismatched reply ({text})") from None
                self.stats.timeouts += 1
                raise _NoAnswer(f"timed out after {self.transport.timeout_s}s") from None
            except TimeoutError:
                self.stats.timeouts += 1
                self._drop_client()
                raise _NoAnswer(f"timed out after {self.transport.timeout_s}s") from None
            except (ConnectionException, OSError) as exc:
                self._drop_client()
                raise _NoAnswer(f"link down ({exc})") from None
            except ModbusException as exc:
                raise self._protocol_error(device_id, unit, f"unit {unit}: {exc}") from exc
            finally:
                if self._frame_gap:  # only RTU needs to know when the line went quiet
                    self._last_frame = time.monotonic()

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _protocol_error(self, device_id: str, unit: int, reason: str) -> DeviceProtocolError:
        self.stats.errors += 1
        self.stats.protocol_errors += 1
        self.stats.per_unit_errors[unit] = self.stats.per_unit_errors.get(unit, 0) + 1
        self.stats.last_error = reason
        self._log_failure(device_id, unit, reason)
        return DeviceProtocolError(device_id, reason)

    def _ok(self) -> None:
        self.stats.last_ok = time.monotonic()
        if self._failing:
            self._failing = False
            self.log.info("modbus bus recovered")

    def _log_failure(self, device_id: str, unit: int, reason: str) -> None:
        # Loud once, then quiet until recovery, as a flapping unit would otherwise flood the log.
        if not self._failing:
            self._failing = True
            self.log.warning("modbus request failed", device=device_id, unit=unit, reason=reason)
        else:
            self.log.debug("modbus request failed", device=device_id, unit=unit, reason=reason)

    # ------------------------------------------------------------------ public operations

    @staticmethod
    @functools.lru_cache(maxsize=256)  # one checker per (kind, count) rather than one per request
    def _check_count(attr: str, count: int) -> Callable[[ModbusPDU], str | None]:
        def check(resp: ModbusPDU) -> str | None:
            got = len(getattr(resp, attr))
            # Bits come back padded to a whole byte, registers must match exactly.
            ok = count <= got < count + 8 if attr == "bits" else got == count
            return None if ok else f"asked for {count} {attr}, got {got}"

        return check

    async def _read(self, table: Table, unit: int, address: int, count: int, device_id: str) -> list[Any]:
        what, method, attr, limit = _READS[table]
        if not 1 <= count <= limit:
            _limit(device_id, count, limit)
        resp = await self._request(
            device_id,
            unit,
            # Formatted only if the read fails: most polls succeed.
            (what, address, count),
            lambda c: getattr(c, method)(address, count=count, device_id=unit),
            self._check_count(attr, count),
        )
        # Bits come back padded to a whole byte; registers were checked to match exactly (and the
        # response is ours alone, so its list needs no copy).
        values: list[Any] = getattr(resp, attr)
        return values if attr == "registers" else values[:count]

    async def read_holding(self, unit: int, address: int, count: int, device_id: str) -> list[int]:
        return await self._read("holding", unit, address, count, device_id)

    async def read_input(self, unit: int, address: int, count: int, device_id: str) -> list[int]:
        return await self._read("input", unit, address, count, device_id)

    async def read_coils(self, unit: int, address: int, count: int, device_id: str) -> list[bool]:
        return await self._read("coils", unit, address, count, device_id)

    async def read_discrete(self, unit: int, address: int, count: int, device_id: str) -> list[bool]:
        return await self._read("discrete", unit, address, count, device_id)

    async def write_coil(self, unit: int, address: int, value: bool, device_id: str) -> None:
        def check(resp: ModbusPDU) -> str | None:
            bits = getattr(resp, "bits", None)
            if bits and bool(bits[0]) != bool(value):
                return f"coil {address} echoed {bits[0]}, wrote {value}"
            return None

        await self._request(
            device_id,
            unit,
            f"write coil {address}={int(value)}",
            lambda c: c.write_coil(address, bool(value), device_id=unit),
            check,
        )

    async def write_register(self, unit: int, address: int, value: int, device_id: str) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{device_id}: register value {value} is not 16-bit")

        def check(resp: ModbusPDU) -> str | None:
            regs = getattr(resp, "registers", None)
            if regs and regs[0] != value:
                return f"register {address} echoed {regs[0]}, wrote {value}"
            return None

        await self._request(
            device_id,
            unit,
            f"write register {address}={value}",
            lambda c: c.write_register(address, value, device_id=unit),
            check,
        )

    async def write_registers(self, unit: int, address: int, values: Sequence[int], device_id: str) -> None:
        _limit(device_id, len(values), 123)
        await self._request(
            device_id,
            unit,
            f"write registers {address}+{len(values)}",
            lambda c: c.write_registers(address, list(values), device_id=unit),
        )

    async def read_table(
        self,
        table: Table,
        unit: int,
        spans: Iterable[int | tuple[int, int]],
        device_id: str,
        *,
        max_gap: int = 8,
    ) -> dict[int, int | bool]:
        """Read every span with as few requests as possible; return address -> value."""
        bits = table in ("coils", "discrete")
        # Pollers pass the same spans every time; planning the reads once per span set is cheaper.
        key = tuple(s if isinstance(s, int) else (s[0], s[1]) for s in spans)  # hashable, lists too
        blocks = _coalesce_cached(key, MAX_READ_BITS if bits else MAX_READ_REGISTERS, max_gap)
        # Declared, so each reader is checked against it: inferred, list[int] and list[bool] join to object.
        readers: dict[Table, Callable[[int, int, int, str], Awaitable[Sequence[int | bool]]]] = {
            "holding": self.read_holding,
            "input": self.read_input,
            "coils": self.read_coils,
            "discrete": self.read_discrete,
        }
        reader = readers[table]
        values: dict[int, int | bool] = {}
        for block in blocks:
            got = await reader(unit, block.address, block.count, device_id)
            values.update(zip(range(block.address, block.end), got, strict=True))
        return values


@functools.lru_cache(maxsize=512)
def _coalesce_cached(
    spans: tuple[int | tuple[int, int], ...], max_count: int, max_gap: int
) -> tuple[ReadBlock, ...]:
    return tuple(coalesce(spans, max_count=max_count, max_gap=max_gap))


def _describe(what: str | tuple[str, int, int]) -> str:
    return what if isinstance(what, str) else what[0].format(what[1], what[2])


def _limit(device_id: str, count: int, maximum: int) -> None:
    if not 1 <= count <= maximum:
        raise ValueError(f"{device_id}: a Modbus request carries 1..{maximum} items, not {count}")
