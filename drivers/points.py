"""A table-driven point model: a device model is a list of points, not code.

A point names one value on a Modbus unit: which table, address, data type, byte/word order,
scale and unit. :func:`compile_points` turns a driver's points into a :class:`ReadPlan` once (the
coalesced reads and a precompiled decoder per point); :func:`read_plan` runs it every poll.
:func:`read_points` does both, for one-off reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import DeviceProtocolError
from drivers.transports import codec

if TYPE_CHECKING:
    from drivers.transports.modbus import ModbusBus, ReadBlock

__all__ = ["Point", "ReadPlan", "compile_points", "read_plan", "read_points"]


class Point(BaseModel):
    """One value on a unit; ``table`` is where it lives (function code 3 = holding, 4 = input)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    table: Literal["holding", "input"] = "input"
    address: int = Field(ge=0, le=65535)
    type: codec.DataType = "float32"
    order: codec.WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""

    @property
    def length(self) -> int:
        return codec.register_count(self.type)

    @model_validator(mode="after")
    def _fits(self) -> Point:
        if self.address + self.length > 65536:
            raise ValueError(f"point {self.name} runs past register 65535")
        if self.scale == 0:
            raise ValueError(f"point {self.name}: scale must not be zero")
        return self


def check_points(points: Iterable[Point]) -> list[str]:
    """Problems spanning points: duplicate names, overlapping registers in the same table."""
    problems: list[str] = []
    names: set[str] = set()
    taken: dict[tuple[str, int], str] = {}
    for p in points:
        if p.name in names:
            problems.append(f"point {p.name!r} is defined twice")
        names.add(p.name)
        for a in range(p.address, p.address + p.length):
            other = taken.get((p.table, a))
            if other is not None:
                problems.append(f"points {other!r} and {p.name!r} overlap at {p.table} register {a}")
                break
            taken[(p.table, a)] = p.name
    return problems


@dataclass(frozen=True, slots=True)
class _PlannedRead:
    table: Literal["holding", "input"]
    block: ReadBlock
    # The block's registers packed as big-endian and/or little-endian words, as its points need.
    pack_big: struct.Struct | None
    pack_little: struct.Struct | None


@dataclass(frozen=True, slots=True)
class _PlannedPoint:
    name: str
    read: int  # index into ReadPlan.reads
    little_words: bool
    byte_offset: int
    unpack_from: struct.Struct
    scale: float
    offset: float


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The requests and decoders for a fixed set of points, worked out once instead of every poll."""

    reads: tuple[_PlannedRead, ...]
    points: tuple[_PlannedPoint, ...]


def compile_points(points: Iterable[Point], *, max_gap: int = 8) -> ReadPlan:
    """Coalesce ``points`` into reads (per table, as few as the map allows) and precompile decoders."""
    from drivers.transports.modbus import coalesce

    by_table: dict[str, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    reads: list[_PlannedRead] = []
    planned: list[_PlannedPoint] = []
    for table, pts in by_table.items():
        first = len(reads)
        blocks = coalesce([(p.address, p.length) for p in pts], max_gap=max_gap)
        endians: list[set[bool]] = [set() for _ in blocks]
        for p in pts:
            i = next(i for i, b in enumerate(blocks) if b.covers(p.address, p.length))
            little_words, fmt = codec.block_layout(p.type, p.order)
            endians[i].add(little_words)
            at = 2 * (p.address - blocks[i].address)
            planned.append(_PlannedPoint(p.name, first + i, little_words, at, fmt, p.scale, p.offset))
        for b, used in zip(blocks, endians, strict=True):
            big = struct.Struct(f">{b.count}H") if False in used else None
            little = struct.Struct(f"<{b.count}H") if True in used else None
            reads.append(_PlannedRead(table, b, big, little))  # type: ignore[arg-type]
    # Output keeps the order read_points always had: tables in order of first use, points as listed.
    return ReadPlan(tuple(reads), tuple(planned))


async def read_plan(bus: ModbusBus, unit: int, plan: ReadPlan, device_id: str) -> dict[str, float | int]:
    """Run ``plan``'s reads on ``unit`` and decode every point (``raw * scale + offset``, as codec.decode)."""
    packed: list[tuple[bytes, bytes]] = []
    for r in plan.reads:
        b = r.block
        if r.table == "input":
            regs = await bus.read_input(unit, b.address, b.count, device_id)
        else:
            regs = await bus.read_holding(unit, b.address, b.count, device_id)
        try:
            big = r.pack_big.pack(*regs) if r.pack_big else b""
            little = r.pack_little.pack(*regs) if r.pack_little else b""
        except struct.error as exc:
            # pymodbus hands back 16-bit values; anything else is a reply not to trust.
            raise DeviceProtocolError(device_id, f"{r.table} {b.address}+{b.count}: {exc}") from exc
        packed.append((big, little))
    out: dict[str, float | int] = {}
    for p in plan.points:
        value: float | int = p.unpack_from.unpack_from(packed[p.read][p.little_words], p.byte_offset)[0]
        if p.scale != 1 or p.offset != 0:
            value = value * p.scale + p.offset
        out[p.name] = value
    return out


async def read_points(
    bus: ModbusBus, unit: int, points: Iterable[Point], device_id: str, *, max_gap: int = 8
) -> dict[str, float | int]:
    """Read and decode every point with as few requests as the map allows (compiles a plan each call:
    a driver polling the same points keeps the result of :func:`compile_points` instead)."""
    return await read_plan(bus, unit, compile_points(points, max_gap=max_gap), device_id)
