"""MQTT door controller over a real broker: presentations, opened vs forced, held open, relay commands."""

from __future__ import annotations

import json
import time

import pytest

from drivers.base import ActionFailed, DeviceUnreachable
from drivers.door_access import MqttDoorDriver, decode_wiegand
from drivers.wiegand import WiegandError, build_wiegand
from simulators.door_access_mqtt import DoorControllerSimulator
from tests.push_fixtures import EventLog, listening, mqtt_device, mqtt_hub, settle


def encode_wiegand(facility: int, card: int, length: int = 26) -> str:
    return format(build_wiegand(facility, card, length), f"0{length}b")


# ---- Wiegand (pure) --------------------------------------------------------------------------------
def test_wiegand26_literal_frame() -> None:
    # facility 1, card 1: even parity over 0000_0001_0000 -> 1; odd parity over 0000_0000_0001 -> 0
    bits = "1" + "00000001" + "0000000000000001" + "0"
    assert decode_wiegand(bits) == (1, 1)
    assert encode_wiegand(1, 1) == bits


@pytest.mark.parametrize(("facility", "card", "length"), [(0, 0, 26), (255, 65535, 26), (4660, 22136, 34)])
def test_wiegand_round_trip(facility: int, card: int, length: int) -> None:
    assert decode_wiegand(encode_wiegand(facility, card, length)) == (facility, card)


def test_wiegand_parity_and_length_errors() -> None:
    good = encode_wiegand(12, 3456)
    flipped = good[:5] + ("0" if good[5] == "1" else "1") + good[6:]
    with pytest.raises(WiegandError, match="parity"):
        decode_wiegand(flipped)
    with pytest.raises(WiegandError, match="30-bit Wiegand is not supported"):
        decode_wiegand("1" * 30)


# ---- driver against the simulator --------------------------------------------------------------------
async def test_card_and_pin_presentations() -> None:
    dev = mqtt_device("door-1", "door_access")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)),
    ):
        await sim.present_card(12345, facility=17, reader="lobby-in")
        card = await log.wait_for("access.presented")
        assert card.data == {
            "credential": "card",
            "reader": "lobby-in",
            "card": "12345",
            "facility": 17,
            "format": "wiegand26",
        }
        await sim.present_card(54321, facility=4000, length=34)
        card34 = await log.wait_for("access.presented", count=2)
        assert (card34.data["card"], card34.data["facility"], card34.data["format"]) == (
            "54321",
            4000,
            "wiegand34",
        )
        await sim.present_pin("4711")
        pin = await log.wait_for("access.presented", count=3)
        assert pin.data == {"credential": "pin", "pin": "4711", "reader": "entry"}
        assert sim.lock == "locked"  # a presentation unlocks nothing by itself


async def test_unlock_then_open_is_not_forced() -> None:
    dev = mqtt_device("door-1", "door_access")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)) as driver,
    ):
        state = await driver.execute("unlock", {"duration_s": 5.0})
        assert state["lock"] == "unlocked"
        assert sim.lock == "unlocked"
        await sim.open_door()
        opened = await log.wait_for("door.opened")
        assert opened.data["forced"] is False
        await sim.close_door()
        closed = await log.wait_for("door.closed")
        assert closed.data["open_s"] is not None
        assert "door.forced_open" not in log.types


async def test_open_without_unlock_is_forced() -> None:
    dev = mqtt_device("door-1", "door_access")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)),
    ):
        await sim.open_door()
        forced = await log.wait_for("door.forced_open")
        assert forced.data == {"lock": "locked"}
        assert log.of("door.opened")[0].data["forced"] is True


async def test_exit_button_authorises_opening() -> None:
    dev = mqtt_device("door-1", "door_access")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)),
    ):
        await sim.press_exit()
        await sim.open_door()
        opened = await log.wait_for("door.opened")
        assert opened.data["forced"] is False
        assert "door.forced_open" not in log.types


async def test_opening_after_the_pulse_relocked_is_forced() -> None:
    dev = mqtt_device("door-1", "door_access", relock_grace_s=0)
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)) as driver,
    ):
        await driver.execute("unlock", {"duration_s": 0.2})
        await settle(lambda: driver.snapshot()["lock"] == "locked")  # the controller relocked on its own
        assert sim.lock == "locked"
        await sim.open_door()
        await log.wait_for("door.forced_open")


async def test_held_open_is_reported_once() -> None:
    dev = mqtt_device("door-1", "door_access", held_open_s=0.3)
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)) as driver,
    ):
        await driver.execute("unlock", {"duration_s": 5.0})
        t0 = time.monotonic()
        await sim.open_door()
        held = await log.wait_for("door.held_open", timeout=3)
        assert time.monotonic() - t0 >= 0.25
        assert held.data["limit_s"] == 0.3
        await sim.close_door()
        await log.wait_for("door.closed")
        assert len(log.of("door.held_open")) == 1


async def test_hold_unlocked_and_release() -> None:
    dev = mqtt_device("door-1", "door_access", held_open_s=0.2)
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)) as driver,
    ):
        state = await driver.execute("hold_unlocked", {})
        assert (state["lock"], state["mode"]) == ("unlocked", "held")
        await sim.open_door()
        await log.wait_for("door.opened")
        await sim.close_door()
        await log.wait_for("door.closed")
        assert "door.held_open" not in log.types  # held unlocked on purpose
        state = await driver.execute("release", {})
        assert (state["lock"], state["mode"]) == ("locked", "normal")
        assert (sim.lock, sim.mode) == ("locked", "normal")
        state = await driver.execute("lock", {})
        assert state["lock"] == "locked"


async def test_refused_and_unanswered_commands() -> None:
    dev = mqtt_device("door-1", "door_access", reply_timeout_s=0.3)
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, EventLog().emit)) as driver,
    ):
        sim.refuse["unlock"] = "relay fault"
        with pytest.raises(ActionFailed, match="relay fault"):
            await driver.execute("unlock", {"duration_s": 5.0})
        assert sim.lock == "locked"
        sim.silent = True
        with pytest.raises(DeviceUnreachable, match="no reply to lock"):
            await driver.execute("lock", {})
        with pytest.raises(ActionFailed, match="no action"):
            await driver.execute("open", {})


async def test_bad_frames_are_counted_and_ignored() -> None:
    dev = mqtt_device("door-1", "door_access")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        DoorControllerSimulator(dev, broker.host, broker.port) as sim,
        listening(MqttDoorDriver(dev, hub, log.emit)) as driver,
    ):
        bad_parity = "0" + "00000001" + "0000000000000001" + "0"
        await sim.publish_raw(json.dumps({"event": "card", "wiegand": {"bits": bad_parity}}).encode())
        await sim.publish_raw(json.dumps({"event": "card", "reader": "x"}).encode())  # no credential
        await sim.publish_raw(json.dumps({"event": "door", "state": "ajar"}).encode())
        await sim.publish_raw(b"\xff\xfe")
        await sim.present_card(7)
        await log.wait_for("access.presented")
        assert driver.snapshot()["bad_payloads"] == 4
        assert log.types == ["access.presented"]
