"""Command lifecycle over HTTP, the broker and a fake gateway that answers on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from protocol import CommandStatus
from tests.cloud.support import FakeGateway, RunningCloud, cloud_settings, eventually, running_cloud


@asynccontextmanager
async def cloud_with_gateway(
    broker_port: int, sqlite_url: str
) -> AsyncIterator[tuple[RunningCloud, FakeGateway]]:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        await gw.send_status(online=True)

        async def registered() -> bool:
            return (await cloud.http.get("/api/v1/devices/gate-1")).status_code == 200

        await eventually(registered)
        yield cloud, gw


async def test_open_gate_accepted_then_succeeded(broker_port: int, sqlite_url: str) -> None:
    async with cloud_with_gateway(broker_port, sqlite_url) as (cloud, gw):
        resp = await cloud.http.post(
            "/api/v1/devices/gate-1/commands",
            json={"action": "open", "reason": "visitor at gate", "issued_by": "agent-7"},
        )
        assert resp.status_code == 202, resp.text
        cmd = resp.json()
        assert (cmd["status"], cmd["action"], cmd["gateway_id"]) == ("sent", "open", "gw-1")
        assert cmd["issued_by"] == "admin"  # the authenticated user, not the body's "agent-7"
        wire = await gw.next_command()
        assert (wire.id, wire.device_id, wire.action, wire.issued_by) == (
            cmd["id"],
            "gate-1",
            "open",
            "admin",
        )
        assert wire.signature  # signed by the cloud
        await gw.answer(wire, CommandStatus.ACCEPTED)
        accepted = (
            await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5, "seen": "sent"})
        ).json()
        assert accepted["status"] == "accepted"
        await gw.answer(wire, CommandStatus.SUCCEEDED, gate="open")
        done = (
            await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5, "seen": "accepted"})
        ).json()
        assert (done["status"], done["final"], done["result_state"]) == ("succeeded", True, {"gate": "open"})
        # A late duplicate never moves a final command backwards.
        await gw.answer(wire, CommandStatus.ACCEPTED)
        audit = await eventually(
            lambda: _audit_len(cloud, cmd["id"], 5),
        )
        assert [a["status"] for a in audit] == ["pending", "sent", "accepted", "succeeded", "accepted"]
        assert (audit[0]["reason"], audit[0]["operator"]) == ("visitor at gate", "admin")
        assert "ignored" in audit[-1]["reason"]
        final = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}")).json()
        assert final["status"] == "succeeded"


async def _audit_len(cloud: RunningCloud, command_id: str, n: int) -> list[dict[str, object]] | None:
    rows = (await cloud.http.get(f"/api/v1/commands/{command_id}/audit")).json()
    return rows if len(rows) >= n else None


async def test_failed_action_carries_the_reason(broker_port: int, sqlite_url: str) -> None:
    async with cloud_with_gateway(broker_port, sqlite_url) as (cloud, gw):
        cmd = (
            await cloud.http.post(
                "/api/v1/devices/door-1/commands", json={"action": "unlock", "args": {"duration_s": 3}}
            )
        ).json()
        assert cmd["args"] == {"duration_s": 3.0}
        wire = await gw.next_command()
        await gw.answer(wire, CommandStatus.FAILED, reason="lock did not release", lock="locked")
        done = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5})).json()
        assert (done["status"], done["result_reason"]) == ("failed", "lock did not release")


async def test_unknown_action_bad_args_and_unknown_device(broker_port: int, sqlite_url: str) -> None:
    async with cloud_with_gateway(broker_port, sqlite_url) as (cloud, gw):
        resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "launch"})
        assert resp.status_code == 422
        err = resp.json()["error"]
        assert err["code"] == "action_not_allowed"
        assert "allowed: close, hold_open, open, release, stop" in err["message"]
        resp = await cloud.http.post(
            "/api/v1/devices/door-1/commands", json={"action": "unlock", "args": {"duration_s": 9999}}
        )
        assert resp.status_code == 422
        assert "duration_s" in resp.json()["error"]["message"]
        resp = await cloud.http.post("/api/v1/devices/meter-1/commands", json={"action": "open"})
        assert "this device only reports" in resp.json()["error"]["message"]
        resp = await cloud.http.post("/api/v1/devices/nope/commands", json={"action": "open"})
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
        resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"actoin": "open"})
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_request")
        assert gw.commands.empty()  # nothing invalid reached the gateway


async def test_command_to_offline_gateway_is_published_and_expires(broker_port: int, sqlite_url: str) -> None:
    async with cloud_with_gateway(broker_port, sqlite_url) as (cloud, gw):
        await gw.send_status(online=False, devices=[])  # the Last Will
        resp = await cloud.http.post(
            "/api/v1/devices/gate-1/commands", json={"action": "open", "expires_in_s": 0.5}
        )
        assert resp.status_code == 202
        cmd = resp.json()
        await gw.next_command()  # still published: a reconnecting gateway refuses it as expired
        done = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5})).json()
        assert (done["status"], done["final"]) == ("expired", True)
        missing = await cloud.http.get("/api/v1/commands/NOPE")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
