"""A visitor at the door station, through the real path: intercom simulator -> MQTT -> gateway driver ->
buffer -> uplink -> cloud store -> HTTP API, and the operator's one command all the way back down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.access.rig import estate, mqtt_device, until

pytestmark = pytest.mark.timeout(90)
MISSED_AFTER_S = 1.5


async def test_visitor_call_answered_and_door_released_with_one_command(tmp_path: Path) -> None:
    station = mqtt_device("intercom-1", "video_intercom", missed_after_s=MISSED_AFTER_S)
    async with estate(tmp_path, [station]) as e:
        sim = e.sims["intercom-1"]

        async def registered() -> bool:
            return (await e.http.get("/api/v1/devices/intercom-1")).status_code == 200

        await until(registered, 10, "the intercom registered in the cloud")

        t0 = time.monotonic()
        call_id = await sim.call("centre")
        started = await e.wait_events("intercom.call_started", timeout=5, device_id="intercom-1")
        assert time.monotonic() - t0 < 2, "a call must reach the operations centre at once"
        assert started[0]["data"]["call_id"] == call_id
        assert started[0]["data"]["target"] == "centre"

        await sim.answer(by="centre")
        answered = await e.wait_events("intercom.call_answered", device_id="intercom-1")
        assert answered[0]["data"]["call_id"] == call_id

        assert not sim.door_unlocked
        r = await e.http.post("/api/v1/devices/intercom-1/commands", json={"action": "unlock"})
        assert r.status_code == 202, r.text
        command_id = r.json()["id"]

        async def final() -> dict | None:
            body = (await e.http.get(f"/api/v1/commands/{command_id}?wait=5")).json()
            return body if body["status"] in ("succeeded", "failed", "rejected", "expired") else None

        done = await until(final, 15, "the unlock command to finish")
        assert done["status"] == "succeeded", done
        assert sim.door_unlocked
        assert sim.unlocks == 1
        assert sim.commands == [{"action": "unlock", "args": {"duration_s": 5.0}}]

        await sim.hang_up()
        ended = await e.wait_events("intercom.call_ended", device_id="intercom-1")
        assert ended[0]["data"]["answered"] is True
        assert await e.events("intercom.call_missed", device_id="intercom-1") == []


async def test_unanswered_call_becomes_missed_in_the_cloud(tmp_path: Path) -> None:
    station = mqtt_device("intercom-1", "video_intercom", missed_after_s=MISSED_AFTER_S)
    async with estate(tmp_path, [station]) as e:
        sim = e.sims["intercom-1"]
        t0 = time.monotonic()
        call_id = await sim.call("apartment", "3-1-1202")
        await e.wait_events("intercom.call_started", timeout=5, device_id="intercom-1")
        missed = await e.wait_events(
            "intercom.call_missed", timeout=MISSED_AFTER_S + 5, device_id="intercom-1"
        )
        assert time.monotonic() - t0 >= MISSED_AFTER_S - 0.1
        assert missed[0]["data"]["call_id"] == call_id
        assert missed[0]["data"]["reason"] == "not_answered"
        assert missed[0]["data"]["apartment"] == "3-1-1202"
        assert sim.unlocks == 0
