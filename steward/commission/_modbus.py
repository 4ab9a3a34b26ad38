"""Modbus side of commissioning: scan a bus unit by unit, identify what answered.

Reads go through :class:`drivers.transports.modbus.ModbusBus`, the gateway's own transport, with
a short timeout and no retries, so a scan of 1-247 on a quiet RS-485 line finishes in minutes and
what the scan sees is what the gateway will see.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import DeviceProtocolError, DeviceUnreachable
from drivers.transports.modbus import ModbusBus
from steward.commission._fingerprints import Match, Read, Values, all_reads, evaluate, identify
from steward.config import ModbusRtuTransport, ModbusTcpTransport

__all__ = ["UnitResult", "parse_units", "probe_unit", "read_fingerprint_values", "scan_units"]

SCAN_ID = "scan"
# Exception codes a TCP gateway sends for a unit behind it that did not answer: "nobody there".
_GATEWAY_NO_ANSWER = {10, 11}
_EXCEPTION = re.compile(r"exception (\d+) \(([^)]*)\)")


@dataclass(slots=True)
class UnitResult:
    unit: int
    answered: bool
    match: Match | None = None
    note: str = ""
    values: dict[Read, Values | None] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.answered:
            return "no answer"
        return self.match.fingerprint.label if self.match else "unknown model"

    def as_dict(self) -> dict[str, Any]:
        fp = self.match.fingerprint if self.match else None
        return {
            "unit": self.unit,
            "answered": self.answered,
            "recognised": fp is not None,
            "kind": fp.kind if fp else None,
            "model": fp.model if fp else None,
            "label": fp.label if fp else None,
            "evidence": self.match.passed if self.match else [],
            "options": self.match.hints if self.match else {},
            "note": self.note,
        }


def parse_units(text: str) -> list[int]:
    """``"1-10"``, ``"1,3,5-7"`` -> sorted unit ids; ValueError with a readable message."""
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise ValueError(f"{part!r} is not a unit id or a range like 1-10") from None
        if first > last:
            raise ValueError(f"range {part!r} runs backwards")
        if first < 0 or last > 247:
            raise ValueError(f"unit ids are 0-247 (1-247 on RS-485); {part!r} is outside")
        units.update(range(first, last + 1))
    if not units:
        raise ValueError("no unit ids given")
    return sorted(units)


def _exception_code(exc: DeviceProtocolError) -> tuple[int, str] | None:
    found = _EXCEPTION.search(exc.reason)
    return (int(found.group(1)), found.group(2)) if found else None


async def _read(bus: ModbusBus, unit: int, read: Read) -> Values:
    table, address, count = read
    if table == "holding":
        return await bus.read_holding(unit, address, count, SCAN_ID)
    if table == "input":
        return await bus.read_input(unit, address, count, SCAN_ID)
    if table == "coils":
        return await bus.read_coils(unit, address, count, SCAN_ID)
    return await bus.read_discrete(unit, address, count, SCAN_ID)


async def read_fingerprint_values(
    bus: ModbusBus, unit: int, reads: Iterable[Read]
) -> dict[Read, Values | None]:
    """Do each read (slicing from an earlier one that covers it); failures become None.

    Raises DeviceUnreachable only if the unit stops answering altogether (two silent reads in a row),
    so a unit that dies mid-scan does not cost a timeout per check.
    """
    values: dict[Read, Values | None] = {}
    done: list[tuple[Read, Values]] = []
    silent = 0
    for read in sorted(set(reads), key=lambda r: (r[0], r[1], -r[2])):
        table, address, count = read
        cover = next(
            (
                (r, v)
                for r, v in done
                if r[0] == table and r[1] <= address and address + count <= r[1] + len(v)
            ),
            None,
        )
        if cover is not None:
            start = address - cover[0][1]
            values[read] = list(cover[1][start : start + count])
            continue
        try:
            got = await _read(bus, unit, read)
        except DeviceUnreachable:
            silent += 1
            values[read] = None
            if silent >= 2:
                raise
            continue
        except DeviceProtocolError:
            values[read] = None
            silent = 0
            continue
        silent = 0
        values[read] = got
        done.append((read, got))
    return values


async def probe_unit(bus: ModbusBus, unit: int) -> UnitResult:
    """Does ``unit`` answer, and which fingerprint does it match?"""
    try:
        await bus.read_holding(unit, 0, 1, SCAN_ID)
        first_note = ""
    except DeviceUnreachable:
        return UnitResult(unit, answered=False, note=f"no answer within {bus.transport.timeout_s:g} s")
    except DeviceProtocolError as exc:
        code = _exception_code(exc)
        if code is not None and code[0] in _GATEWAY_NO_ANSWER:
            return UnitResult(unit, answered=False, note=f"gateway: {code[1]}")
        first_note = f"exception {code[0]} ({code[1]})" if code else exc.reason
    try:
        values = await read_fingerprint_values(bus, unit, all_reads())
    except DeviceUnreachable:
        return UnitResult(unit, answered=True, note="answered once, then stopped answering")
    match = identify(values)
    note = ""
    if match is None:
        readable = sum(v is not None for v in values.values())
        if readable == 0:
            note = f"answers every read with {first_note}" if first_note else "every read refused"
        else:
            note = "answers, but matches no known fingerprint"
    return UnitResult(unit, answered=True, match=match, note=note, values=values)


async def scan_units(
    transport: ModbusTcpTransport | ModbusRtuTransport,
    units: list[int],
    on_unit: Callable[[UnitResult], Awaitable[None] | None] | None = None,
) -> list[UnitResult]:
    bus = ModbusBus(transport)
    results: list[UnitResult] = []
    try:
        for unit in units:
            result = await probe_unit(bus, unit)
            results.append(result)
            if on_unit is not None:
                maybe = on_unit(result)
                if maybe is not None:
                    await maybe
    finally:
        await bus.close()
    return results


def check_model(values: dict[Read, Values | None], kind: str, model: str) -> tuple[bool | None, str]:
    """Does what was read fit the configured kind/model? (None, why) when there is no fingerprint."""
    from steward.commission._fingerprints import fingerprint_for

    fp = fingerprint_for(kind, model)
    if fp is None:
        return None, f"no fingerprint for {kind} model {model!r}"
    match = evaluate(fp, values)
    if match.ok:
        return True, f"looks like {fp.label}"
    other = identify(values)
    seen = f"looks like {other.fingerprint.model} ({other.fingerprint.label}), not" if other else "not like"
    return False, f"{seen} {fp.model}: failed {'; '.join(match.failed)}"
