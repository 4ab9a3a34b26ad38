"""Which device is on this Modbus unit? Fingerprints as a table, matched without I/O.

A fingerprint is a list of reads, each with a test the values must pass: mains voltage
(180-260 V) and frequency (45-65 Hz) at a meter model's addresses, one limit switch on at a gate
I/O module, flag layouts in a fire panel's zone registers. The first fingerprint whose every
check passes names the model; a unit that answers but matches none is an "unknown model".

:func:`evaluate` is pure: give it the values read (or ``None`` where a read failed) and it says
which checks passed. The async layer that does the reads lives in ``_modbus_scan``.

Fingerprints are evidence, not proof: generic I/O modules look alike (an unwired module with all
inputs off resembles a door module), so the scan shows the evidence next to the model it names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.fire_panel import UNPROGRAMMED
from drivers.transports import codec

__all__ = [
    "FINGERPRINTS",
    "Check",
    "Fingerprint",
    "Match",
    "Read",
    "evaluate",
    "fingerprint_for",
    "identify",
]

TableName = Literal["holding", "input", "coils", "discrete"]
Values = Sequence[int] | Sequence[bool]
# (table, address, count) -> what was read, or None when the read failed (exception, no answer).
Read = tuple[TableName, int, int]


@dataclass(frozen=True, slots=True)
class Check:
    """Read ``count`` values from ``table`` at ``address``; ``test`` says whether they fit."""

    table: TableName
    address: int
    count: int
    test: Callable[[Values], bool]
    says: str

    @property
    def read(self) -> Read:
        return (self.table, self.address, self.count)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    kind: str
    model: str
    label: str
    checks: tuple[Check, ...]
    # Options worth putting in the config, derived from the values read (e.g. a panel's zone count).
    hints: Callable[[Mapping[Read, Values | None]], dict[str, Any]] | None = None


@dataclass(slots=True)
class Match:
    fingerprint: Fingerprint
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    hints: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


# ---- value tests ---------------------------------------------------------------------------------
def _floats(regs: Values, order: codec.WordOrder = "ABCD") -> list[float]:
    out = []
    for i in range(0, len(regs) - 1, 2):
        value = float(codec.decode_raw([int(regs[i]), int(regs[i + 1])], "float32", order))
        out.append(value)
    return out


def _all_within(lo: float, hi: float, order: codec.WordOrder = "ABCD") -> Callable[[Values], bool]:
    def test(regs: Values) -> bool:
        values = _floats(regs, order)
        return bool(values) and all(math.isfinite(v) and lo <= v <= hi for v in values)

    return test


def _none_within(lo: float, hi: float) -> Callable[[Values], bool]:
    def test(regs: Values) -> bool:
        return not any(math.isfinite(v) and lo <= v <= hi for v in _floats(regs))

    return test


def _water_volumes(regs: Values) -> bool:
    forward, reverse, flow = _floats(regs, "DCBA")
    if not all(math.isfinite(v) for v in (forward, reverse, flow)):
        return False
    return 0.001 <= forward <= 1e7 and 0 <= reverse <= forward and 0 <= flow <= 1000


def _fire_zone(raw: int) -> bool:
    """A programmed zone: exactly one of enabled/disabled, nothing in the unused top bit."""
    if raw & 0x8000:
        return False
    return bool(raw >> 8 & 1) != bool(raw >> 9 & 1)


def _fire_zones(regs: Values) -> bool:
    raws = [int(r) for r in regs]
    if not _fire_zone(raws[0]) and raws[0] != UNPROGRAMMED:
        return False
    ok = all(r in (0, UNPROGRAMMED) or _fire_zone(r) for r in raws)
    return ok and any(_fire_zone(r) for r in raws)


FIRE_ZONE_READ: Read = ("holding", 100, 32)


def _fire_hints(values: Mapping[Read, Values | None]) -> dict[str, Any]:
    regs = values.get(FIRE_ZONE_READ)
    if not regs:
        return {}
    last = max((i for i, r in enumerate(regs) if int(r) == UNPROGRAMMED or _fire_zone(int(r))), default=-1)
    return {"zones": last + 1} if last >= 0 else {}


def _one_limit(bits: Values) -> bool:
    return bool(bits[0]) != bool(bits[1])


def _door_registers(regs: Values) -> bool:
    bits = int(regs[1])
    raw = int(codec.decode_raw([int(r) for r in regs[2:6]], "uint64"))
    if bits not in (0, 26, 34):
        return False
    return raw == 0 if bits == 0 else raw < (1 << bits)


def _readable(values: Values) -> bool:
    return True


_SDM_FREQUENCY = Check("input", 0x0046, 2, _all_within(45, 65), "frequency 45-65 Hz at input 0x0046")

# Order matters: the most specific first (an SDM630 also passes the SDM120's voltage check).
FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint(
        "smart_meter",
        "sdm630",
        "Eastron SDM630 three-phase meter",
        (
            Check(
                "input", 0x0000, 6, _all_within(180, 260), "L1-L3 voltage 180-260 V at input 0x0000-0x0005"
            ),
            _SDM_FREQUENCY,
        ),
    ),
    Fingerprint(
        "smart_meter",
        "sdm120",
        "Eastron SDM120 single-phase meter",
        (
            Check("input", 0x0000, 2, _all_within(180, 260), "voltage 180-260 V at input 0x0000"),
            _SDM_FREQUENCY,
            Check("input", 0x0002, 2, _none_within(180, 260), "no second phase voltage at input 0x0002"),
        ),
    ),
    Fingerprint(
        "smart_meter",
        "ddsu666",
        "CHINT DDSU666 single-phase meter",
        (
            Check("input", 0x2000, 2, _all_within(180, 260), "voltage 180-260 V at input 0x2000"),
            Check("input", 0x200E, 2, _all_within(45, 65), "frequency 45-65 Hz at input 0x200E"),
        ),
    ),
    Fingerprint(
        "smart_meter",
        "water_rs485",
        "RS-485 ultrasonic water meter",
        (
            Check(
                "holding",
                0,
                6,
                _water_volumes,
                "volumes and flow plausible at holding 0-5 (float32 DCBA, reverse <= forward)",
            ),
            Check("holding", 6, 1, lambda r: int(r[0]) < 8, "status register holding 6 uses bits 0-2 only"),
        ),
    ),
    Fingerprint(
        "fire_panel",
        "modbus-gateway",
        "Fire panel Modbus gateway",
        (
            Check("holding", 0, 1, lambda r: int(r[0]) < 32, "panel status holding 0 uses bits 0-4 only"),
            Check(*FIRE_ZONE_READ, _fire_zones, "zone flags at holding 100+ (enabled/disabled, type byte)"),
        ),
        hints=_fire_hints,
    ),
    Fingerprint(
        "barrier_gate",
        "io-module",
        "Barrier gate I/O module",
        (
            Check("discrete", 0, 5, _one_limit, "discrete inputs 0-4 readable, exactly one limit switch on"),
            Check("coils", 0, 4, _readable, "command coils 0-3 readable"),
        ),
    ),
    Fingerprint(
        "door_access",
        "io-module",
        "Door I/O module with Wiegand interface",
        (
            Check("coils", 0, 1, _readable, "lock relay coil 0 readable"),
            Check("discrete", 0, 2, _readable, "door contact and exit button (discrete 0-1) readable"),
            Check("holding", 0, 10, _door_registers, "card registers holding 0-9 (26/34-bit frame)"),
        ),
    ),
)


def evaluate(fp: Fingerprint, values: Mapping[Read, Values | None]) -> Match:
    """Which of ``fp``'s checks the values pass; a missing or failed read fails its check."""
    match = Match(fp)
    for check in fp.checks:
        got = values.get(check.read)
        try:
            ok = got is not None and len(got) >= check.count and check.test(got[: check.count])
        except (codec.CodecError, ValueError, IndexError):
            ok = False
        (match.passed if ok else match.failed).append(check.says)
    if match.ok and fp.hints is not None:
        match.hints = fp.hints(values)
    return match


def identify(values: Mapping[Read, Values | None]) -> Match | None:
    """The first fingerprint every check of which passes, or None for an unknown model."""
    for fp in FINGERPRINTS:
        match = evaluate(fp, values)
        if match.ok:
            return match
    return None


def fingerprint_for(kind: str, model: str) -> Fingerprint | None:
    """The fingerprint a configured device should match: by model for meters, by kind otherwise."""
    for fp in FINGERPRINTS:
        if fp.kind == kind and (kind != "smart_meter" or fp.model == model):
            return fp
    return None


def all_reads() -> list[Read]:
    """Every distinct read the fingerprints need, in table order (few round trips)."""
    seen: dict[Read, None] = {}
    for fp in FINGERPRINTS:
        for check in fp.checks:
            seen.setdefault(check.read, None)
    return list(seen)
