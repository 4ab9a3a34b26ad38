"""Register codec against literal values, as a vendor manual would print them."""

from __future__ import annotations

import math

import pytest

from drivers.transports import codec


@pytest.mark.parametrize(
    ("registers", "order"),
    [
        ([0x4049, 0x0FDB], "ABCD"),
        ([0xDB0F, 0x4940], "DCBA"),
        ([0x4940, 0xDB0F], "BADC"),
        ([0x0FDB, 0x4049], "CDAB"),
    ],
)
def test_float32_in_every_order(registers: list[int], order: codec.WordOrder) -> None:
    assert codec.decode(registers, "float32", order) == pytest.approx(math.pi, rel=1e-6)
    assert codec.encode(math.pi, "float32", order) == registers


def test_sdm_voltage_literal() -> None:
    # Eastron SDM120 manual: 230.0 V reads as 0x4366 0x0000.
    assert codec.decode([0x4366, 0x0000], "float32") == pytest.approx(230.0)


def test_integers_signed_and_unsigned() -> None:
    assert codec.decode([0xFFFF], "int16") == -1
    assert codec.decode([0xFFFF], "uint16") == 65535
    assert codec.decode([0x0001, 0x0000], "uint32", "ABCD") == 65536
    assert codec.decode([0x0000, 0x0001], "uint32", "CDAB") == 65536
    assert codec.decode([0xFFFF, 0xFFFE], "int32") == -2
    assert codec.decode([0, 0, 0, 1], "uint64") == 1
    assert codec.decode([1, 0, 0, 0], "uint64", "CDAB") == 1


def test_float64() -> None:
    regs = codec.encode(-1234.5678, "float64")
    assert regs == [0xC093, 0x4A45, 0x6D5C, 0xFAAD]
    assert codec.decode(regs, "float64") == -1234.5678
    assert codec.decode(codec.encode(2.5, "float64", "DCBA"), "float64", "DCBA") == 2.5


def test_scale_and_offset_round_trip() -> None:
    # 0.1 degC per count with a -40 offset, typical of a temperature input.
    assert codec.decode([650], "int16", scale=0.1, offset=-40) == pytest.approx(25.0)
    assert codec.encode(25.0, "int16", scale=0.1, offset=-40) == [650]
    assert codec.decode([1234], "uint16", scale=0.01) == pytest.approx(12.34)


def test_errors_are_explicit() -> None:
    with pytest.raises(codec.CodecError, match="needs 2 register"):
        codec.decode([1], "float32")
    with pytest.raises(codec.CodecError, match="does not fit"):
        codec.encode(70000, "int16")
    with pytest.raises(codec.CodecError, match="unknown byte/word order"):
        codec.decode([1, 2], "uint32", "XYZW")  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError, match="unknown data type"):
        codec.register_count("int8")  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError, match="16-bit"):
        codec.decode([0x10000], "uint16")


def test_bit_fields() -> None:
    value = 0b1010_0110_0000_0101
    assert codec.get_bit(value, 0) is True
    assert codec.get_bit(value, 1) is False
    assert codec.get_bits(value, 8, 8) == 0b1010_0110
    assert codec.get_bits(value, 0, 3) == 0b101
    assert codec.set_bits(0, 8, 8, 0xFF) == 0xFF00
    assert codec.flags(0x05, {0: "a", 1: "b", 2: "c"}) == {"a": True, "b": False, "c": True}
    assert codec.register_count("float64") == 4
