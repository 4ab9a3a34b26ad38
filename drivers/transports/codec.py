"""Register decoding without I/O: Modbus registers in, numbers out (and back).

Every function here is pure so device tables can be tested with literal register values copied
from a vendor's manual. Byte/word order names follow the usual convention for the four bytes
``A B C D`` of a big-endian 32-bit value (extended word by word for 64-bit values):

======  =========================================  =====================================
order   what arrives on the wire (registers)       seen on
======  =========================================  =====================================
ABCD    ``[AB, CD]``  big-endian, high word first  Modbus spec, Eastron, CHINT
DCBA    ``[DC, BA]``  fully little-endian          some water/heat meters
BADC    ``[BA, DC]``  bytes swapped in each word   some PLCs
CDAB    ``[CD, AB]``  low word first               Schneider, many PLCs ("word swap")
======  =========================================  =====================================

A decoded value is ``raw * scale + offset``; encoding inverts that and rounds integers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal, get_args

DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
WordOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

DATA_TYPES: tuple[str, ...] = get_args(DataType)
WORD_ORDERS: tuple[str, ...] = get_args(WordOrder)

# type -> (struct format, register count); like Home Assistant's modbus validators, a table not branches.
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}


class CodecError(ValueError):
    """Registers that cannot be decoded as asked (wrong count, out-of-range value)."""


def register_count(dtype: DataType) -> int:
    """How many 16-bit registers a value of ``dtype`` occupies."""
    try:
        return _FORMATS[dtype][1]
    except KeyError:
        raise CodecError(f"unknown data type {dtype!r}; known: {', '.join(DATA_TYPES)}") from None


def _check_order(order: str) -> None:
    if order not in WORD_ORDERS:
        raise CodecError(f"unknown byte/word order {order!r}; known: {', '.join(WORD_ORDERS)}")


def registers_to_bytes(registers: Sequence[int], order: WordOrder = "ABCD") -> bytes:
    """Reassemble registers into big-endian bytes (``ABCD...``) whatever order the device uses."""
    _check_order(order)
    for r in registers:
        if not 0 <= r <= 0xFFFF:
            raise CodecError(f"register value {r} is not 16-bit")
    words = list(registers)
    if order in ("DCBA", "CDAB"):
        words.reverse()
    swap_bytes = order in ("DCBA", "BADC")
    out = bytearray()
    for w in words:
        hi, lo = w >> 8, w & 0xFF
        out += bytes((lo, hi)) if swap_bytes else bytes((hi, lo))
    return bytes(out)


def bytes_to_registers(data: bytes, order: WordOrder = "ABCD") -> list[int]:
    """Inverse of :func:`registers_to_bytes`: big-endian bytes to registers in the device's order."""
    _check_order(order)
    if len(data) % 2:
        raise CodecError(f"{len(data)} bytes do not fill whole registers")
    swap_bytes = order in ("DCBA", "BADC")
    words = []
    for i in range(0, len(data), 2):
        hi, lo = data[i], data[i + 1]
        words.append((lo << 8 | hi) if swap_bytes else (hi << 8 | lo))
    if order in ("DCBA", "CDAB"):
        words.reverse()
    return words


def decode_raw(registers: Sequence[int], dtype: DataType, order: WordOrder = "ABCD") -> int | float:
    """The unscaled value of ``dtype`` in ``registers`` (exactly ``register_count(dtype)`` of them)."""
    fmt, count = _FORMATS.get(dtype, ("", 0))
    if not count:
        register_count(dtype)  # raises the helpful error
    if len(registers) != count:
        raise CodecError(f"{dtype} needs {count} register(s), got {len(registers)}")
    value: int | float = struct.unpack(">" + fmt, registers_to_bytes(registers, order))[0]
    return value


def decode(
    registers: Sequence[int],
    dtype: DataType,
    order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> int | float:
    """``raw * scale + offset``; stays an int when the raw value is an int and scale/offset are 1/0."""
    raw = decode_raw(registers, dtype, order)
    if scale == 1 and offset == 0:
        return raw
    return raw * scale + offset


def block_layout(dtype: DataType, order: WordOrder = "ABCD") -> tuple[bool, struct.Struct]:
    """How to read ``dtype`` in ``order`` straight out of a packed block of registers.

    Returns ``(little_words, fmt)``: pack the block's registers with ``>nH`` (``little_words`` False)
    or ``<nH`` (True), then ``fmt.unpack_from(block, 2 * register_offset)`` gives what
    :func:`decode_raw` gives. Packing a whole block once and unpacking each value in place costs a
    fraction of reassembling every value's bytes register by register, which matters at hundreds of
    devices a second. (A byte-swapped word order reads as a little-endian word; a reversed word
    order reads as a little-endian value.)
    """
    fmt, count = _FORMATS.get(dtype, ("", 0))
    if not count:
        register_count(dtype)
    _check_order(order)
    little_words = order in ("BADC", "CDAB")
    little_value = order in ("DCBA", "CDAB")
    return little_words, struct.Struct(("<" if little_value else ">") + fmt)


def encode(
    value: float,
    dtype: DataType,
    order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """Registers that :func:`decode` turns back into ``value`` (integers are rounded)."""
    fmt, _count = _FORMATS.get(dtype, ("", 0))
    if not fmt:
        register_count(dtype)
    if scale == 0:
        raise CodecError("scale must not be zero")
    raw: float = (value - offset) / scale
    packed_value: int | float
    if fmt in "fd":
        packed_value = float(raw)
    else:
        if math.isnan(raw) or math.isinf(raw):
            raise CodecError(f"{value!r} cannot be stored as {dtype}")
        packed_value = round(raw)
    try:
        data = struct.pack(">" + fmt, packed_value)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{value!r} does not fit in {dtype}") from exc
    return bytes_to_registers(data, order)


def get_bit(value: int, bit: int) -> bool:
    """Bit ``bit`` (0 = least significant) of an integer register value."""
    return bool(value >> bit & 1)


def get_bits(value: int, start: int, width: int) -> int:
    """The ``width``-bit field starting at bit ``start`` (0 = least significant)."""
    if width <= 0 or start < 0:
        raise CodecError("bit field needs start >= 0 and width > 0")
    return value >> start & ((1 << width) - 1)


def set_bits(value: int, start: int, width: int, field: int) -> int:
    """``value`` with the ``width``-bit field at ``start`` replaced by ``field``."""
    mask = (1 << width) - 1
    if not 0 <= field <= mask:
        raise CodecError(f"{field} does not fit in {width} bit(s)")
    return value & ~(mask << start) | field << start


def flags(value: int, names: dict[int, str]) -> dict[str, bool]:
    """Name each bit of a status register: ``flags(0x05, {0: "a", 2: "c"}) == {"a": True, "c": True}``."""
    return {name: get_bit(value, bit) for bit, name in names.items()}
