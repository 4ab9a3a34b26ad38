"""BTHome v2 parsing with literal bytes from the bthome.io format examples."""

from __future__ import annotations

import pytest

from drivers.bthome import (
    BTHOME_SERVICE_UUID,
    BTHomeEncryptedError,
    BTHomeError,
    encode_service_data,
    parse_advertisement,
    parse_service_data,
)


@pytest.mark.parametrize(
    ("hex_objects", "key", "value"),
    [
        ("0161", "battery", 97),
        ("02CA09", "temperature", 25.06),
        ("451101", "temperature", 27.3),
        ("03BF13", "humidity", 50.55),
        ("2E23", "humidity", 35),
        ("04138A01", "pressure", 1008.83),
        ("05138A14", "illuminance", 13460.67),
        ("0C020C", "voltage", 3.074),
        ("14020C", "moisture", 30.74),
        ("12E204", "co2", 1250),
        ("08CA06", "dewpoint", 17.38),
        ("0B021B00", "power", 69.14),
        ("434E34", "current", 13.39),
        ("5D02EA", "current", -5.63),
        ("5AEAEA", "count", -5398),
        ("3E2A2C0960", "count", 1611213866),
    ],
)
def test_spec_examples(hex_objects: str, key: str, value: float) -> None:
    packet = parse_service_data(bytes.fromhex("40" + hex_objects))
    assert packet.values == {key: value}
    assert not packet.encrypted
    assert not packet.trigger_based


def test_full_advertisement_from_a_real_sensor() -> None:
    # 40 | 00 3f | 01 5e | 02 8208 | 03 ac17 | 0c 830b  (bthome-ble issue #118, decoded there by hand)
    packet = parse_service_data(bytes.fromhex("40003f015e02820803ac170c830b"))
    assert packet.packet_id == 63
    assert packet.values == {"battery": 94, "temperature": 21.78, "humidity": 60.6, "voltage": 2.947}


def test_negative_temperature_and_repeated_objects() -> None:
    # two temperatures: -5.5 (0x45 sint16 x0.1 = 0xFFC9) and 21.0 (0x02 sint16 x0.01 = 0x0834)
    packet = parse_service_data(bytes.fromhex("40" + "023408" + "45C9FF"))
    assert packet.values == {"temperature": 21.0, "temperature_2": -5.5}


def test_binary_sensors_and_button_events() -> None:
    packet = parse_service_data(bytes.fromhex("44" + "2101" + "2D00" + "3A04"))
    assert packet.trigger_based
    assert packet.values == {"motion": True, "window": False}
    assert packet.events == [("button", "long_press")]


def test_unknown_object_keeps_what_came_before() -> None:
    packet = parse_service_data(bytes.fromhex("40" + "0161" + "EE0102"))
    assert packet.values == {"battery": 97}
    assert packet.unknown_object_id == 0xEE


def test_firmware_version_and_text() -> None:
    packet = parse_service_data(bytes.fromhex("40" + "F100010204" + "5304" + b"door".hex()))
    assert packet.info == {"firmware_version": "4.2.1.0", "text": "door"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (bytes.fromhex("02CA09"), "version 0"),  # a v1-style payload without the device info byte
        (bytes.fromhex("2002CA09"), "version 1"),
        (bytes.fromhex("4002CA"), "needs 2 bytes"),
        (bytes.fromhex("4004138A"), "needs 3 bytes"),
        (bytes.fromhex("40530A414243"), "claims 10 bytes"),
    ],
)
def test_garbage_is_a_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(BTHomeError, match=message):
        parse_service_data(payload)


def test_encrypted_payload_is_refused_clearly() -> None:
    # device info 0x41 (v2, encrypted), then ciphertext, 4-byte counter and 4-byte MIC
    with pytest.raises(BTHomeEncryptedError, match="encrypted"):
        parse_service_data(bytes.fromhex("41a4726c6a04112233345b7f1b24"))


def test_parse_advertisement_needs_bthome_service_data() -> None:
    assert parse_advertisement({BTHOME_SERVICE_UUID: bytes.fromhex("400161")}).values == {"battery": 97}
    with pytest.raises(BTHomeError, match="no BTHome"):
        parse_advertisement({"0000181c-0000-1000-8000-00805f9b34fb": b"\x02\x01\x61"})


def test_encoder_is_the_parsers_mirror_image() -> None:
    raw = encode_service_data({"pressure": 1008.83, "packet_id": 9, "temperature": -3.25, "humidity": 85})
    assert raw == bytes.fromhex("40" + "0009" + "02BBFE" + "033421" + "04138A01")
    packet = parse_service_data(raw)
    assert packet.packet_id == 9
    assert packet.values == {"temperature": -3.25, "humidity": 85.0, "pressure": 1008.83}
    with pytest.raises(ValueError, match="cannot encode"):
        encode_service_data({"flux": 1})
