"""The whole way: the fire panel simulator raises an alarm -> Modbus -> gateway -> MQTT -> cloud ingest ->
the work order rule -> an emergency work order with the zone and location, within one second."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from steward.broker import free_port
from tests.cloud.support import streaming
from tests.stack import running_stack
from tests.workorders.support import login


def fire_panel() -> dict[str, Any]:
    return {
        "id": "fire-1",
        "kind": "fire_panel",
        "poll_interval_s": 0.1,
        "transport": {
            "type": "modbus_tcp",
            "host": "127.0.0.1",
            "port": free_port(),
            "unit": 3,
            "timeout_s": 0.3,
        },
        "options": {"zones": 8, "zone_names": {"3": "Block C lobby"}},
        "location": {"building": "C", "area": "fire control room"},
    }


async def test_fire_alarm_opens_an_emergency_work_order_within_a_second(tmp_path: Path) -> None:
    async with running_stack(tmp_path, [fire_panel()]) as stack:
        stack.http.headers.update(await login(stack.http, stack.cloud_settings))
        await stack.wait_for("/api/v1/devices/fire-1")
        loop = asyncio.get_running_loop()
        raised = loop.time()
        stack.sims["fire-1"].alarm(3)
        r = await stack.wait_for(
            "/api/v1/work-orders?priority=emergency", lambda r: len(r.json()["items"]) == 1, timeout=5
        )
        elapsed = loop.time() - raised
        [wo] = r.json()["items"]
        assert elapsed < 1.0, f"work order after {elapsed:.2f} s"
        assert (wo["rule_id"], wo["category"], wo["status"], wo["device_id"]) == (
            "fire-alarm",
            "fire",
            "open",
            "fire-1",
        )
        assert wo["teams"] == ["security", "engineering"]
        assert (wo["data"]["zone"], wo["data"]["zone_name"]) == (3, "Block C lobby")
        assert wo["location"] == {"building": "C", "area": "fire control room"}
        assert wo["site_id"] == "oak-garden" and wo["title"] == "Fire alarm: zone 3 Block C lobby"

        # The panel restores the zone: the work order shows the condition cleared and stays open for people.
        stack.sims["fire-1"].restore(3)
        r = await stack.wait_for(
            f"/api/v1/work-orders/{wo['id']}", lambda r: r.json()["cleared_by"] == "fire.restored", timeout=5
        )
        assert r.json()["status"] == "open"


async def test_the_operators_stream_shows_the_work_order_as_it_opens_and_changes(tmp_path: Path) -> None:
    """The console's work-order list listens for ``work_order`` on the live stream; until the cloud sent
    them it showed a fire alarm's work order only at its next 15 s refresh."""
    async with running_stack(tmp_path, [fire_panel()]) as stack:
        stack.http.headers.update(await login(stack.http, stack.cloud_settings))
        await stack.wait_for("/api/v1/devices/fire-1")
        async with streaming(stack.http, kinds="work_order") as stream:
            stack.sims["fire-1"].alarm(3)

            def fire(got: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
                # Planned maintenance may open work orders of its own meanwhile.
                return [d for k, d in got if k == "work_order" and d["rule_id"] == "fire-alarm"]

            wo = fire(await stream.until(fire))[0]
            assert (wo["status"], wo["site_id"], wo["device_id"]) == ("open", "oak-garden", "fire-1")
            r = await stack.http.post(
                f"/api/v1/work-orders/{wo['id']}/transitions", json={"to": "acknowledged", "actor": "op-1"}
            )
            assert r.status_code == 200, r.text
            got = await stream.until(lambda got: fire(got)[-1]["status"] == "acknowledged")
            assert {d["id"] for d in fire(got)} == {wo["id"]}
            # The panel restores the zone: the condition's clearing is news to the console too.
            stack.sims["fire-1"].restore(3)
            got = await stream.until(lambda got: fire(got)[-1]["cleared_by"] == "fire.restored")
            assert fire(got)[-1]["status"] == "acknowledged"
