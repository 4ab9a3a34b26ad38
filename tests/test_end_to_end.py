"""One device all the way up and one command all the way down, through real sockets:
Modbus TCP simulator -> driver -> gateway buffer -> MQTT (embedded broker) -> cloud store -> HTTP API."""

from pathlib import Path

from steward.broker import free_port
from tests.stack import running_stack


def gate(port: int) -> dict:
    return {
        "id": "east-gate",
        "kind": "barrier_gate",
        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 0.5},
        "poll_interval_s": 0.1,
        "location": {"lane": "east entrance, in"},
    }


async def test_open_gate_from_the_api(tmp_path: Path) -> None:
    async with running_stack(tmp_path, [gate(free_port())]) as stack:
        # The gateway's retained status registers the device in the cloud.
        await stack.wait_for("/api/v1/devices/east-gate")
        sim = stack.sims["east-gate"]
        assert sim.state()["state"] == "closed"

        r = await stack.http.post("/api/v1/devices/east-gate/commands", json={"action": "open"})
        assert r.status_code == 202, r.text
        command_id = r.json()["id"]

        done = await stack.wait_for(
            f"/api/v1/commands/{command_id}?wait=5", lambda r: r.json()["status"] in ("succeeded", "failed")
        )
        body = done.json()
        assert body["status"] == "succeeded", body
        assert sim.state()["state"] == "open"

        events = await stack.wait_for(
            "/api/v1/events?device_id=east-gate&type=gate.opened", lambda r: len(r.json()["items"]) >= 1
        )
        item = events.json()["items"][0]
        assert item["device_id"] == "east-gate"
        assert item["location"]["lane"] == "east entrance, in"


async def test_unknown_action_is_422_naming_allowed_actions(tmp_path: Path) -> None:
    async with running_stack(tmp_path, [gate(free_port())]) as stack:
        await stack.wait_for("/api/v1/devices/east-gate")
        r = await stack.http.post("/api/v1/devices/east-gate/commands", json={"action": "fly"})
        assert r.status_code == 422
        assert "allowed: close, hold_open, open, release, stop" in r.text
