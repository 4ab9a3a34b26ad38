"""Video intercom over a real broker: calls, answers, missed calls, unlock/hangup round trips, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from drivers.base import ActionFailed, DeviceUnreachable
from drivers.door_access import MqttDoorDriver
from drivers.video_intercom import IntercomDriver
from simulators.door_access_mqtt import DoorControllerSimulator
from simulators.intercom import IntercomSimulator
from tests.push_fixtures import EventLog, listening, mqtt_device, mqtt_hub


async def test_call_answer_hangup_cycle() -> None:
    dev = mqtt_device("intercom-1", "video_intercom")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)) as driver,
    ):
        call_id = await sim.call("apartment", "3-1-1202")
        started = await log.wait_for("intercom.call_started")
        assert started.data == {"call_id": call_id, "target": "apartment", "apartment": "3-1-1202"}
        assert driver.snapshot()["call"]["call_id"] == call_id

        await sim.answer(by="apartment")
        answered = await log.wait_for("intercom.call_answered")
        assert answered.data["call_id"] == call_id
        assert answered.data["by"] == "apartment"

        await sim.hang_up()
        ended = await log.wait_for("intercom.call_ended")
        assert ended.data["answered"] is True
        assert ended.data["reason"] == "caller"
        assert "intercom.call_missed" not in log.types
        assert driver.snapshot()["call"] is None


async def test_unlock_is_confirmed_by_the_station() -> None:
    dev = mqtt_device("intercom-1", "video_intercom")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)) as driver,
    ):
        state = await driver.execute("unlock", {"duration_s": 7.0})
        assert sim.door_unlocked
        assert sim.commands == [{"action": "unlock", "args": {"duration_s": 7.0}}]
        until = datetime.fromisoformat(state["door_unlocked_until"])
        assert 6 < (until - datetime.now(UTC)).total_seconds() <= 7


async def test_execute_without_a_listener_still_gets_its_reply() -> None:
    dev = mqtt_device("intercom-1", "video_intercom")
    async with mqtt_hub() as (broker, hub), IntercomSimulator(dev, broker.host, broker.port) as sim:
        driver = IntercomDriver(dev, hub, EventLog().emit)
        await driver.open()
        try:
            await driver.execute("unlock", {"duration_s": 2.0})
            assert sim.unlocks == 1
        finally:
            await driver.close()


async def test_hangup_ends_the_active_call() -> None:
    dev = mqtt_device("intercom-1", "video_intercom")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)) as driver,
    ):
        call_id = await sim.call("centre")
        await log.wait_for("intercom.call_started")
        await sim.answer()
        await log.wait_for("intercom.call_answered")
        await driver.execute("hangup", {})
        assert sim.commands[-1] == {"action": "hangup", "args": {"call_id": call_id}}
        ended = await log.wait_for("intercom.call_ended")
        assert ended.data["reason"] == "remote"


async def test_unanswered_call_is_missed_once() -> None:
    dev = mqtt_device("intercom-1", "video_intercom", missed_after_s=0.3)
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)),
    ):
        t0 = time.monotonic()
        call_id = await sim.call("apartment", "2-2-0801")
        missed = await log.wait_for("intercom.call_missed", timeout=3)
        assert time.monotonic() - t0 >= 0.25
        assert missed.data["call_id"] == call_id
        assert missed.data["reason"] == "not_answered"
        await sim.hang_up()
        ended = await log.wait_for("intercom.call_ended")
        assert ended.data["answered"] is False
        assert len(log.of("intercom.call_missed")) == 1


async def test_call_ended_before_anyone_answers_is_missed() -> None:
    dev = mqtt_device("intercom-1", "video_intercom", missed_after_s=30)
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)),
    ):
        await sim.call("centre")
        await sim.hang_up()
        await log.wait_for("intercom.call_ended")
        assert log.types == ["intercom.call_started", "intercom.call_missed", "intercom.call_ended"]
        assert log.of("intercom.call_missed")[0].data["reason"] == "ended_unanswered"


async def test_refused_and_unanswered_commands() -> None:
    dev = mqtt_device("intercom-1", "video_intercom", reply_timeout_s=0.3)
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, EventLog().emit)) as driver,
    ):
        sim.refuse["unlock"] = "lock jammed"
        with pytest.raises(ActionFailed, match="lock jammed"):
            await driver.execute("unlock", {"duration_s": 5.0})
        with pytest.raises(ActionFailed, match="no such active call"):
            await driver.execute("hangup", {})
        sim.refuse.clear()
        sim.silent = True
        t0 = time.monotonic()
        with pytest.raises(DeviceUnreachable, match="no reply to unlock"):
            await driver.execute("unlock", {"duration_s": 5.0})
        assert time.monotonic() - t0 < 2


async def test_malformed_and_oversized_payloads_are_counted_and_ignored() -> None:
    dev = mqtt_device("intercom-1", "video_intercom")
    log = EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(dev, broker.host, broker.port) as sim,
        listening(IntercomDriver(dev, hub, log.emit)) as driver,
    ):
        await sim.publish_raw(b"{not json")
        await sim.publish_raw(json.dumps({"event": "call", "call_id": "x", "target": "apartment"}).encode())
        await sim.publish_raw(json.dumps({"event": "teleport"}).encode())
        await sim.publish_raw(b'{"event": "call", "pad": "' + b"x" * (65 * 1024) + b'"}')
        await sim.publish_raw(b"garbage reply", topic=sim.reply_topic)
        await sim.call("centre")  # still alive afterwards
        await log.wait_for("intercom.call_started")
        assert driver.snapshot()["bad_payloads"] == 5
        assert log.types == ["intercom.call_started"]


async def test_two_devices_share_the_gateway_client() -> None:
    """One MQTT client for all devices: each driver gets its own events and replies."""
    intercom_dev = mqtt_device("intercom-1", "video_intercom")
    door_dev = mqtt_device("door-1", "door_access")
    ilog, dlog = EventLog(), EventLog()
    async with (
        mqtt_hub() as (broker, hub),
        IntercomSimulator(intercom_dev, broker.host, broker.port) as isim,
        DoorControllerSimulator(door_dev, broker.host, broker.port) as dsim,
        listening(IntercomDriver(intercom_dev, hub, ilog.emit)) as intercom,
        listening(MqttDoorDriver(door_dev, hub, dlog.emit)) as door,
    ):
        await isim.call("centre")
        await dsim.present_card(4242)
        await ilog.wait_for("intercom.call_started")
        await dlog.wait_for("access.presented")
        results = await asyncio.gather(
            intercom.execute("unlock", {"duration_s": 3.0}), door.execute("unlock", {"duration_s": 3.0})
        )
        assert results[1]["lock"] == "unlocked"
        assert isim.unlocks == 1
        assert dsim.pulses == 1
        assert ilog.types == ["intercom.call_started"]
        assert dlog.types == ["access.presented"]
