"""Wiegand card frames without I/O: an integer of ``bits`` bits in, facility and card out (and back).

A reader sends the bits most significant first; a Modbus reader interface stores them as one
integer, first bit transmitted = highest bit. Both supported layouts put an even-parity bit in
front and an odd-parity bit behind, each covering half of the data bits::

    26 bit  P FFFFFFFF CCCCCCCCCCCCCCCC P      even over bits 1..12, odd over bits 13..24
            E facility  card number    O       facility 0..255, card 0..65535
    34 bit  P FFFFFFFFFFFFFFFF CCCCCCCCCCCCCCCC P    even over bits 1..16, odd over bits 17..32
            E  facility (16)    card (16)        O    or the 32 data bits read as one card number

Bit 0 is the first bit transmitted. :func:`parse_wiegand` raises :class:`WiegandError` (a
``ValueError``) for a wrong length, a value that does not fit, or either parity bit wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SUPPORTED_BITS",
    "WiegandCard",
    "WiegandError",
    "build_wiegand",
    "build_wiegand_number",
    "format_card_number",
    "parse_wiegand",
]

# bits -> facility width (card is always 16 bits); the data bits are bits - 2.
_FACILITY_BITS = {26: 8, 34: 16}
CARD_BITS = 16
SUPPORTED_BITS: tuple[int, ...] = tuple(_FACILITY_BITS)


class WiegandError(ValueError):
    """A Wiegand frame that cannot be decoded: unsupported length, out of range, parity wrong."""


@dataclass(frozen=True, slots=True)
class WiegandCard:
    """One decoded frame. ``number`` is all data bits as one integer (24 or 32 bits), which is
    what readers configured for "32-bit card number" print on the card."""

    bits: int
    raw: int
    facility: int
    card: int

    @property
    def number(self) -> int:
        return self.facility << CARD_BITS | self.card

    @property
    def card_number(self) -> str:
        return format_card_number(self.facility, self.card, self.bits)

    @property
    def format(self) -> str:
        return f"wiegand{self.bits}"


def format_card_number(facility: int, card: int, bits: int = 26) -> str:
    """The usual printed form ``FFF-CCCCC`` (26 bit) or ``FFFFF-CCCCC`` (34 bit), zero padded."""
    width = 3 if bits == 26 else 5
    return f"{facility:0{width}d}-{card:05d}"


def _parity(value: int) -> int:
    return value.bit_count() & 1


def _check_length(bits: int) -> int:
    if bits not in _FACILITY_BITS:
        raise WiegandError(f"{bits}-bit Wiegand is not supported; supported: 26, 34")
    return (bits - 2) // 2


def parse_wiegand(value: int, bits: int) -> WiegandCard:
    """Decode a frame of ``bits`` bits held in ``value`` (first bit transmitted = highest bit)."""
    half = _check_length(bits)
    if not 0 <= value < 1 << bits:
        raise WiegandError(f"value {value:#x} does not fit in {bits} bits")
    data = value >> 1 & ((1 << (bits - 2)) - 1)
    lead, trail = value >> (bits - 1), value & 1
    first, second = data >> half, data & ((1 << half) - 1)
    if lead != _parity(first):
        raise WiegandError(f"{bits}-bit frame {value:#x}: even parity (leading bit) is wrong")
    if trail == _parity(second):
        raise WiegandError(f"{bits}-bit frame {value:#x}: odd parity (trailing bit) is wrong")
    return WiegandCard(bits=bits, raw=value, facility=data >> CARD_BITS, card=data & 0xFFFF)


def build_wiegand(facility: int, card: int, bits: int = 26) -> int:
    """The frame a reader would send for ``facility`` / ``card`` (simulators use it)."""
    _check_length(bits)
    fac_bits = _FACILITY_BITS[bits]
    if not 0 <= facility < 1 << fac_bits:
        raise WiegandError(f"facility {facility} does not fit in {fac_bits} bits")
    if not 0 <= card < 1 << CARD_BITS:
        raise WiegandError(f"card {card} does not fit in {CARD_BITS} bits")
    return _frame(facility << CARD_BITS | card, bits)


def build_wiegand_number(number: int, bits: int = 34) -> int:
    """The frame for a card printed as one number (all data bits: 24 for 26-bit, 32 for 34-bit)."""
    _check_length(bits)
    if not 0 <= number < 1 << (bits - 2):
        raise WiegandError(f"card number {number} does not fit in {bits - 2} bits")
    return _frame(number, bits)


def _frame(data: int, bits: int) -> int:
    half = (bits - 2) // 2
    first, second = data >> half, data & ((1 << half) - 1)
    lead = _parity(first)  # makes the first half plus the lead bit even
    trail = 1 - _parity(second)  # makes the second half plus the trail bit odd
    return lead << (bits - 1) | data << 1 | trail
