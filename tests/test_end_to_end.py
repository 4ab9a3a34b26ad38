"""One device all the way up and commands all the way down, through real sockets and the real parts:
Modbus TCP simulator -> driver -> gateway buffer -> MQTT (embedded broker) -> cloud store -> HTTP API,
and HTTP -> cloud -> broker -> gateway -> driver -> simulator -> back. Every test runs on SQLite and on
PostgreSQL (where it runs)."""

from pathlib import Path
from typing import Any

from steward.broker import free_port
from tests.stack import CloudDb, running_stack

GATE = "/api/v1/devices/east-gate"


def gate(port: int) -> dict[str, Any]:
    return {
        "id": "east-gate",
        "kind": "barrier_gate",
        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 0.5},
        "poll_interval_s": 0.1,
        "location": {"lane": "east entrance, in"},
    }


async def test_open_gate_from_the_api(tmp_path: Path, cloud_db: CloudDb) -> None:
    async with running_stack(tmp_path, [gate(free_port())], database=cloud_db) as stack:
        # The gateway's retained status registers the device in the cloud.
        await stack.wait_for(GATE)
        sim = stack.sims["east-gate"]
        assert sim.state()["state"] == "closed"

        r = await stack.http.post(f"{GATE}/commands", json={"action": "open"})
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


async def test_unknown_action_is_422_naming_allowed_actions(tmp_path: Path, cloud_db: CloudDb) -> None:
    async with running_stack(tmp_path, [gate(free_port())], database=cloud_db) as stack:
        await stack.wait_for(GATE)
        r = await stack.http.post(f"{GATE}/commands", json={"action": "fly"})
        assert r.status_code == 422
        assert "allowed: close, hold_open, open, release, stop" in r.text


async def test_a_faulted_gate_fails_the_open_with_its_reason_and_does_not_move(
    tmp_path: Path, cloud_db: CloudDb
) -> None:
    async with running_stack(tmp_path, [gate(free_port())], database=cloud_db) as stack:
        await stack.wait_for(GATE)
        sim = stack.sims["east-gate"]
        sim.fault()
        r = await stack.http.post(f"{GATE}/commands", params={"wait": 5}, json={"action": "open"})
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["status"], body["final"]) == ("failed", True), body
        assert body["result_reason"] == "motor fault, cannot open"
        assert body["result_state"]["state"] == "fault"
        assert sim.state()["state"] == "fault", "the OPEN coil must not have been pulsed"
        trail = (await stack.http.get(f"/api/v1/commands/{body['id']}/audit")).json()
        assert [a["status"] for a in trail] == ["pending", "sent", "accepted", "failed"]
        assert trail[-1]["reason"] == "motor fault, cannot open"


async def test_a_command_to_an_offline_gateway_expires_and_never_runs_when_it_returns(
    tmp_path: Path, cloud_db: CloudDb
) -> None:
    async with running_stack(tmp_path, [gate(free_port())], database=cloud_db, link=True) as stack:
        assert stack.link is not None
        await stack.wait_for(GATE, lambda r: r.status_code == 200 and r.json()["online"] is True)
        sim = stack.sims["east-gate"]
        await stack.link.cut()
        # The broker publishes the gateway's Last Will: the cloud shows its devices as unknown.
        await stack.wait_for(GATE, lambda r: r.json()["online"] is None)
        r = await stack.http.post(f"{GATE}/commands", json={"action": "open"})
        body = r.json()
        # At once, not after the default 30 s expiry: the operator knows to send someone.
        assert (body["status"], body["final"]) == ("expired", True), body
        assert body["result_reason"].startswith("gateway gw-1 is offline, last heard from ")

        await stack.link.restore()
        await stack.wait_for(GATE, lambda r: r.json()["online"] is True, timeout=15)
        assert sim.state()["state"] == "closed"
        # A command now goes through at once: had the expired one been queued for the gateway, it
        # would have run first (commands to one gateway arrive in order).
        later = await stack.http.post(f"{GATE}/commands", params={"wait": 5}, json={"action": "open"})
        assert later.json()["status"] == "succeeded", later.text
        assert sim.state()["state"] == "open"
        expired = (await stack.http.get(f"/api/v1/commands/{body['id']}/audit")).json()
        assert [a["status"] for a in expired] == ["pending", "expired"], "not sent, no word from it"


async def test_a_command_delivered_after_its_expiry_is_refused_by_the_gateway(
    tmp_path: Path, cloud_db: CloudDb
) -> None:
    """The gateway checks expiry before acting: a link that stalls past the command's expiry and then
    delivers it does not open the gate after the operator was told it expired."""
    async with running_stack(tmp_path, [gate(free_port())], database=cloud_db, link=True) as stack:
        assert stack.link is not None
        await stack.wait_for(GATE, lambda r: r.status_code == 200 and r.json()["online"] is True)
        sim = stack.sims["east-gate"]
        stack.link.hold()
        r = await stack.http.post(
            f"{GATE}/commands", params={"wait": 5}, json={"action": "open", "expires_in_s": 1}
        )
        body = r.json()
        assert (body["status"], body["final"]) == ("expired", True), body

        stack.link.release()  # the stalled command now reaches the gateway, two seconds late
        trail = await stack.wait_for(
            f"/api/v1/commands/{body['id']}/audit",
            lambda r: any("before the gateway could act" in (a["reason"] or "") for a in r.json()),
        )
        refusal = next(a for a in trail.json() if "before the gateway could act" in (a["reason"] or ""))
        assert refusal["status"] == "expired" and "ignored: command already expired" in refusal["reason"]
        assert sim.state()["state"] == "closed"
        assert (await stack.http.get(f"/api/v1/commands/{body['id']}")).json()["status"] == "expired"
