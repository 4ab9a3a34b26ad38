"""Wiegand 26/34 decoding and encoding with literal frames (checked bit by bit in the comments)."""

from __future__ import annotations

import pytest

from drivers.wiegand import (
    WiegandCard,
    WiegandError,
    build_wiegand,
    build_wiegand_number,
    format_card_number,
    parse_wiegand,
)

# (frame, bits, facility, card)
FRAMES = [
    # 1 00000001 0000000000000001 0 : one 1 in the first 12 data bits -> lead 1; one in the last 12 -> trail 0
    (0b10000000100000000000000010, 26, 1, 1),
    (0x2F623AE, 26, 123, 4567),
    # 0 11111111 1111111111111111 1 : twelve 1s each side -> lead 0, trail 1
    (0x1FFFFFF, 26, 255, 65535),
    (0x0000001, 26, 0, 0),
    # 1 0001001000110100 0101011001111000 1
    (0b1000100100011010001010110011110001, 34, 0x1234, 0x5678),
    (0x200020002, 34, 1, 1),
]


@pytest.mark.parametrize(("frame", "bits", "facility", "card"), FRAMES)
def test_parse_and_build_literal_frames(frame: int, bits: int, facility: int, card: int) -> None:
    parsed = parse_wiegand(frame, bits)
    assert parsed == WiegandCard(bits=bits, raw=frame, facility=facility, card=card)
    assert build_wiegand(facility, card, bits) == frame


def test_card_number_forms() -> None:
    w26 = parse_wiegand(0x2F623AE, 26)
    assert w26.card_number == "123-04567"
    assert w26.number == 123 * 65536 + 4567 == 8065495
    assert w26.format == "wiegand26"
    w34 = parse_wiegand(0x22468ACF1, 34)
    assert w34.card_number == "04660-22136"
    assert w34.number == 0x12345678
    assert format_card_number(7, 42) == "007-00042"
    assert format_card_number(7, 42, 34) == "00007-00042"


def test_34_bit_card_as_one_number() -> None:
    assert build_wiegand_number(0x12345678, 34) == 0x22468ACF1
    assert parse_wiegand(0x22468ACF1, 34).number == 0x12345678
    assert build_wiegand_number(0, 26) == 0x1


@pytest.mark.parametrize(
    ("frame", "bits", "message"),
    [
        (0x2F623AE ^ 1 << 25, 26, "even parity"),  # leading bit flipped
        (0x2F623AE ^ 1, 26, "odd parity"),  # trailing bit flipped
        (0x2F623AE ^ 1 << 20, 26, "even parity"),  # a facility bit flipped
        (0x2F623AE ^ 1 << 3, 26, "odd parity"),  # a card bit flipped
        (0x22468ACF1 ^ 1 << 33, 34, "even parity"),
        (0x22468ACF1 ^ 1 << 1, 34, "odd parity"),
        (0, 26, "odd parity"),  # all zeros: a reader wired backwards or no card
    ],
)
def test_parity_errors(frame: int, bits: int, message: str) -> None:
    with pytest.raises(WiegandError, match=message):
        parse_wiegand(frame, bits)


def test_bad_lengths_and_ranges() -> None:
    assert issubclass(WiegandError, ValueError)
    with pytest.raises(WiegandError, match="37-bit Wiegand is not supported"):
        parse_wiegand(1, 37)
    with pytest.raises(WiegandError, match="does not fit in 26 bits"):
        parse_wiegand(1 << 26, 26)
    with pytest.raises(WiegandError, match="does not fit in 26 bits"):
        parse_wiegand(-1, 26)
    with pytest.raises(WiegandError, match="facility 256 does not fit in 8 bits"):
        build_wiegand(256, 1, 26)
    with pytest.raises(WiegandError, match="card 65536 does not fit"):
        build_wiegand(1, 65536, 34)
    with pytest.raises(WiegandError, match="does not fit in 32 bits"):
        build_wiegand_number(1 << 32, 34)
