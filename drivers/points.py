"""A table-driven point model: a device model is a list of points, not code.

A point names one value on a Modbus unit: which table, address, data type, byte/word order,
scale and unit. :func:`read_points` fetches a whole table of points with coalesced reads and
decodes them with the pure codec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import DeviceProtocolError
from drivers.transports import codec

if TYPE_CHECKING:
    from drivers.transports.modbus import ModbusBus

__all__ = ["Point", "read_points"]


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


async def read_points(
    bus: ModbusBus, unit: int, points: Iterable[Point], device_id: str, *, max_gap: int = 8
) -> dict[str, float | int]:
    """Read and decode every point with as few requests as the map allows."""
    by_table: dict[str, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    out: dict[str, float | int] = {}
    for table, pts in by_table.items():
        raw = await bus.read_table(
            table,  # type: ignore[arg-type]
            unit,
            [(p.address, p.length) for p in pts],
            device_id,
            max_gap=max_gap,
        )
        for p in pts:
            regs = [int(raw[a]) for a in range(p.address, p.address + p.length)]
            try:
                out[p.name] = codec.decode(regs, p.type, p.order, p.scale, p.offset)
            except codec.CodecError as exc:
                raise DeviceProtocolError(device_id, f"point {p.name}: {exc}") from exc
    return out
