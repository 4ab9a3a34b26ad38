"""BTHome v2 advertisement parsing: bytes in, typed measurements out. No I/O, no bleak.

A BTHome v2 sensor broadcasts BLE *service data* under the 16-bit UUID 0xFCD2
(``0000fcd2-0000-1000-8000-00805f9b34fb``). The payload is::

    device info byte | object id | value | object id | value | ...

Device info byte: bit 0 = encrypted, bit 2 = trigger-based (sent on events, not at regular
intervals), bits 5-7 = version (must be 2). Each object id fixes the value's length, sign and
scale (:data:`OBJECTS`, after bthome.io/format and bthome-ble's ``const.py``); values are
little-endian. Objects come in ascending id order, so an unknown id ends the parse: what was
decoded before it is kept and the id is reported in :attr:`BTHomePacket.unknown_object_id`.

Encrypted packets (AES-CCM) raise :class:`BTHomeEncryptedError`; decryption needs the
``cryptography`` package, which this gateway does not ship yet.

Errors::

    BTHomeError                  not a usable BTHome v2 payload (too short, wrong version, truncated)
     └── BTHomeEncryptedError    encrypted payload, which this parser does not decrypt
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

__all__ = [
    "BTHOME_SERVICE_UUID",
    "BTHOME_UUID16",
    "MEASUREMENT_NAMES",
    "OBJECTS",
    "UNITS",
    "BTHomeEncryptedError",
    "BTHomeError",
    "BTHomePacket",
    "ObjectType",
    "encode_service_data",
    "parse_advertisement",
    "parse_service_data",
]

BTHOME_UUID16 = 0xFCD2
BTHOME_SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"

_ENCRYPTED = 0x01
_TRIGGER_BASED = 0x04
_VERSION_SHIFT = 5


class BTHomeError(ValueError):
    """The bytes are not a BTHome v2 payload this parser can decode."""


class BTHomeEncryptedError(BTHomeError):
    """The payload is encrypted (AES-CCM); a bindkey and decryption are needed."""


@dataclass(frozen=True, slots=True)
class ObjectType:
    """How one object id is laid out on the air."""

    name: str
    length: int
    signed: bool = False
    factor: float = 1.0
    unit: str | None = None
    kind: Literal["sensor", "binary", "event", "info"] = "sensor"


def _s(
    name: str, length: int, factor: float = 1.0, unit: str | None = None, *, signed: bool = False
) -> ObjectType:
    return ObjectType(name, length, signed, factor, unit)


def _b(name: str) -> ObjectType:
    return ObjectType(name, 1, kind="binary")


# Object id -> layout. Names are the measurement keys drivers see; where BTHome has two encodings of
# one quantity (0x02/0x45 temperature, 0x03/0x2E humidity) both decode to the same key.
OBJECTS: dict[int, ObjectType] = {
    0x00: ObjectType("packet_id", 1, kind="info"),
    0x01: _s("battery", 1, unit="%"),
    0x02: _s("temperature", 2, 0.01, "°C", signed=True),
    0x03: _s("humidity", 2, 0.01, "%"),
    0x04: _s("pressure", 3, 0.01, "hPa"),
    0x05: _s("illuminance", 3, 0.01, "lx"),
    0x06: _s("mass", 2, 0.01, "kg"),
    0x07: _s("mass_lb", 2, 0.01, "lb"),
    0x08: _s("dewpoint", 2, 0.01, "°C", signed=True),
    0x09: _s("count", 1),
    0x0A: _s("energy", 3, 0.001, "kWh"),
    0x0B: _s("power", 3, 0.01, "W"),
    0x0C: _s("voltage", 2, 0.001, "V"),
    0x0D: _s("pm25", 2, unit="µg/m³"),
    0x0E: _s("pm10", 2, unit="µg/m³"),
    0x0F: _b("generic_boolean"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _s("co2", 2, unit="ppm"),
    0x13: _s("tvoc", 2, unit="µg/m³"),
    0x14: _s("moisture", 2, 0.01, "%"),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _s("humidity", 1, unit="%"),
    0x2F: _s("moisture", 1, unit="%"),
    0x3A: ObjectType("button", 1, kind="event"),
    0x3C: ObjectType("dimmer", 2, kind="event"),
    0x3D: _s("count", 2),
    0x3E: _s("count", 4),
    0x3F: _s("rotation", 2, 0.1, "°", signed=True),
    0x40: _s("distance_mm", 2, unit="mm"),
    0x41: _s("distance", 2, 0.1, "m"),
    0x42: _s("duration", 3, 0.001, "s"),
    0x43: _s("current", 2, 0.001, "A"),
    0x44: _s("speed", 2, 0.01, "m/s"),
    0x45: _s("temperature", 2, 0.1, "°C", signed=True),
    0x46: _s("uv_index", 1, 0.1),
    0x47: _s("volume", 2, 0.1, "L"),
    0x48: _s("volume_ml", 2, unit="mL"),
    0x49: _s("volume_flow_rate", 2, 0.001, "m³/h"),
    0x4A: _s("voltage", 2, 0.1, "V"),
    0x4B: _s("gas", 3, 0.001, "m³"),
    0x4C: _s("gas", 4, 0.001, "m³"),
    0x4D: _s("energy", 4, 0.001, "kWh"),
    0x4E: _s("volume", 4, 0.001, "L"),
    0x4F: _s("water", 4, 0.001, "L"),
    0x50: ObjectType("timestamp", 4, unit="s", kind="info"),
    0x51: _s("acceleration", 2, 0.001, "m/s²"),
    0x52: _s("gyroscope", 2, 0.001, "°/s"),
    0x56: _s("conductivity", 2, unit="µS/cm"),
    0x57: _s("temperature", 1, unit="°C", signed=True),
    0x58: _s("temperature", 1, 0.35, "°C", signed=True),
    0x59: _s("count", 1, signed=True),
    0x5A: _s("count", 2, signed=True),
    0x5B: _s("count", 4, signed=True),
    0x5C: _s("power", 4, 0.01, "W", signed=True),
    0x5D: _s("current", 2, 0.001, "A", signed=True),
    0xF0: ObjectType("device_type_id", 2, kind="info"),
    0xF1: ObjectType("firmware_version", 4, kind="info"),
    0xF2: ObjectType("firmware_version", 3, kind="info"),
}

# Measurement keys a sensor can report, for validating configuration (thresholds and the like).
MEASUREMENT_NAMES: frozenset[str] = frozenset(
    o.name for o in OBJECTS.values() if o.kind in ("sensor", "binary")
)
UNITS: dict[str, str] = {o.name: o.unit for o in OBJECTS.values() if o.unit is not None}

_BUTTON_EVENTS = {
    0x00: "none",
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}


@dataclass(frozen=True, slots=True)
class BTHomePacket:
    """One decoded advertisement."""

    encrypted: bool
    trigger_based: bool
    packet_id: int | None = None
    values: dict[str, float | int | bool] = field(default_factory=dict)
    events: list[tuple[str, str | int]] = field(default_factory=list)
    info: dict[str, int | str] = field(default_factory=dict)
    unknown_object_id: int | None = None


def _key(name: str, taken: Mapping[str, object]) -> str:
    """Second and later occurrences of one quantity get ``_2``, ``_3``... as bthome-ble does."""
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


def _scaled(raw: int, factor: float) -> float | int:
    if factor == 1.0:
        return raw
    # Round to the factor's decimals so 0.01 * 2506 is 25.06, not 25.060000000000002.
    exponent = Decimal(str(factor)).as_tuple().exponent
    return round(raw * factor, -exponent if isinstance(exponent, int) else 3)


def parse_service_data(payload: bytes) -> BTHomePacket:
    """Decode the service data of UUID 0xFCD2 (device info byte onwards)."""
    if len(payload) < 1:
        raise BTHomeError("empty BTHome payload")
    info_byte = payload[0]
    version = info_byte >> _VERSION_SHIFT
    if version != 2:
        raise BTHomeError(
            f"BTHome version {version} in device info byte 0x{info_byte:02x}; only v2 is supported"
        )
    encrypted = bool(info_byte & _ENCRYPTED)
    trigger_based = bool(info_byte & _TRIGGER_BASED)
    if encrypted:
        raise BTHomeEncryptedError("encrypted BTHome payload; decryption is not supported on this gateway")

    values: dict[str, float | int | bool] = {}
    events: list[tuple[str, str | int]] = []
    info: dict[str, int | str] = {}
    packet_id: int | None = None
    unknown: int | None = None
    pos = 1
    while pos < len(payload):
        obj_id = payload[pos]
        obj = OBJECTS.get(obj_id)
        if obj is None:
            if obj_id in (0x53, 0x54) and pos + 1 < len(payload):  # text / raw: length-prefixed
                size = payload[pos + 1]
                end = pos + 2 + size
                if end > len(payload):
                    raise BTHomeError(
                        f"object 0x{obj_id:02x} claims {size} bytes, only {len(payload) - pos - 2} left"
                    )
                raw = payload[pos + 2 : end]
                name = "text" if obj_id == 0x53 else "raw"
                info[_key(name, info)] = raw.decode("utf-8", "replace") if obj_id == 0x53 else raw.hex()
                pos = end
                continue
            unknown = obj_id
            break
        start, end = pos + 1, pos + 1 + obj.length
        if end > len(payload):
            raise BTHomeError(
                f"object 0x{obj_id:02x} ({obj.name}) needs {obj.length} bytes, {len(payload) - start} left"
            )
        raw_int = int.from_bytes(payload[start:end], "little", signed=obj.signed)
        pos = end
        if obj.kind == "info":
            if obj.name == "packet_id":
                packet_id = raw_int
            elif obj.name == "firmware_version":
                info["firmware_version"] = ".".join(str(b) for b in reversed(payload[start:end]))
            else:
                info[obj.name] = raw_int
        elif obj.kind == "binary":
            values[_key(obj.name, values)] = bool(raw_int)
        elif obj.kind == "event":
            if obj.name == "button":
                events.append(("button", _BUTTON_EVENTS.get(raw_int, f"0x{raw_int:02x}")))
            else:
                events.append((obj.name, raw_int))
        else:
            values[_key(obj.name, values)] = _scaled(raw_int, obj.factor)
    return BTHomePacket(
        encrypted=encrypted,
        trigger_based=trigger_based,
        packet_id=packet_id,
        values=values,
        events=events,
        info=info,
        unknown_object_id=unknown,
    )


def parse_advertisement(service_data: dict[str, bytes]) -> BTHomePacket:
    """Decode bleak's ``AdvertisementData.service_data``; BTHomeError if it carries no BTHome data."""
    payload = service_data.get(BTHOME_SERVICE_UUID)
    if payload is None:
        raise BTHomeError("advertisement carries no BTHome (0xFCD2) service data")
    return parse_service_data(bytes(payload))


# ---- encoding: used by the simulator, the mirror image of the parser ---------------------------
_ENCODE_IDS: dict[str, int] = {
    "packet_id": 0x00,
    "battery": 0x01,
    "temperature": 0x02,
    "humidity": 0x03,
    "pressure": 0x04,
    "illuminance": 0x05,
    "voltage": 0x0C,
    "co2": 0x12,
    "moisture": 0x14,
}


def encode_service_data(values: dict[str, float | int], *, trigger_based: bool = False) -> bytes:
    """Build an unencrypted BTHome v2 payload (device info byte onwards), objects in id order."""
    out = bytearray([(2 << _VERSION_SHIFT) | (_TRIGGER_BASED if trigger_based else 0)])
    items = []
    for name, value in values.items():
        obj_id = _ENCODE_IDS.get(name)
        if obj_id is None:
            raise ValueError(f"cannot encode {name!r}; encodable: {', '.join(sorted(_ENCODE_IDS))}")
        items.append((obj_id, value))
    for obj_id, value in sorted(items):
        obj = OBJECTS[obj_id]
        raw = round(value / obj.factor)
        out.append(obj_id)
        out += raw.to_bytes(obj.length, "little", signed=obj.signed)
    return bytes(out)
