"""Roles and sites: an operator of estate A sees and commands estate A only; every refusal is audited."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from cloud.auth import Role
from protocol import CommandStatus, DeviceInfo
from tests.auth.support import App, served
from tests.cloud.support import FakeGateway, cloud_settings, eventually, make_batch, make_event

A, B = "estate-a", "estate-b"
B_DEVICES = [DeviceInfo(id="gate-b", kind="barrier_gate", model="generic")]


async def _two_estates(c: App, gw_a: FakeGateway, gw_b: FakeGateway) -> None:
    await gw_a.send_status(online=True)
    await gw_b.send_status(online=True, devices=B_DEVICES)
    await gw_a.send_batch(make_batch([make_event("gate-1", "gate.opened", 1)]))
    await gw_b.send_batch(make_batch([make_event("gate-b", "gate.opened", 1)], site=B, gateway="gw-b"))
    await gw_a.next_ack()
    await gw_b.next_ack()
    admin = await c.user("root", Role.ADMIN)

    async def both_registered() -> bool:
        devices = (await c.http.get("/api/v1/devices", headers=admin)).json()["items"]
        return {"gate-1", "gate-b"} <= {d["id"] for d in devices}

    await eventually(both_registered)


async def _forbidden(resp: httpx.Response) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "forbidden"


async def test_operator_of_a_is_refused_everything_at_b_and_it_is_audited(
    broker_port: int, sqlite_url: str
) -> None:
    async with (
        served(cloud_settings(broker_port, sqlite_url)) as c,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site=B, gateway="gw-b") as gw_b,
    ):
        await _two_estates(c, gw_a, gw_b)
        admin = await c.login_headers("root", "pw-root-0123456789")
        op = await c.user("op-a", Role.OPERATOR, [A])
        get = c.http.get

        # Lists are filtered to estate A.
        assert [s["id"] for s in (await get("/api/v1/sites", headers=op)).json()["items"]] == [A]
        assert [g["id"] for g in (await get("/api/v1/gateways", headers=op)).json()["items"]] == ["gw-1"]
        assert "gate-b" not in {d["id"] for d in (await get("/api/v1/devices", headers=op)).json()["items"]}
        events = (await get("/api/v1/events", headers=op)).json()["items"]
        assert {e["site_id"] for e in events} == {A}
        assert (await get("/api/v1/events", params={"device_id": "gate-b"}, headers=op)).json()["items"] == []
        every = (await get("/api/v1/devices", headers=admin)).json()["items"]
        assert {d["id"] for d in every} >= {"gate-1", "gate-b"}

        # Anything at B by name: 403.
        await _forbidden(await get("/api/v1/devices/gate-b", headers=op))
        await _forbidden(await get("/api/v1/devices/gate-b/readings", headers=op))
        await _forbidden(await get("/api/v1/devices", params={"site_id": B}, headers=op))
        await _forbidden(await get("/api/v1/events", params={"site_id": B}, headers=op))
        await _forbidden(await get("/api/v1/gateways", params={"site_id": B}, headers=op))
        await _forbidden(await get("/api/v1/commands", params={"site_id": B}, headers=op))
        await _forbidden(await get("/api/v1/stream", params={"site_id": B}, headers=op))
        refused = await c.http.post("/api/v1/devices/gate-b/commands", json={"action": "open"}, headers=op)
        await _forbidden(refused)
        # A command at B issued by the admin is not the operator's to read either.
        at_b = (
            await c.http.post("/api/v1/devices/gate-b/commands", json={"action": "close"}, headers=admin)
        ).json()
        assert (await gw_b.next_command()).id == at_b["id"]  # only the admin's command reached gw-b
        await _forbidden(await get(f"/api/v1/commands/{at_b['id']}", headers=op))
        await _forbidden(await get(f"/api/v1/commands/{at_b['id']}/audit", headers=op))
        await _forbidden(
            await c.http.post(
                "/api/v1/gateways/register", json={"site_id": B, "gateway_id": "gw-x"}, headers=op
            )
        )

        # At A the operator commands, always as themselves: a body naming someone else is refused.
        impostor = await c.http.post(
            "/api/v1/devices/gate-1/commands",
            json={"action": "open", "issued_by": "someone-else"},
            headers=op,
        )
        assert (impostor.status_code, impostor.json()["error"]["code"]) == (422, "invalid_request")
        mine = await c.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"}, headers=op)
        assert mine.status_code == 202, mine.text
        assert mine.json()["issued_by"] == "op-a"
        wire = await gw_a.next_command()
        assert wire.issued_by == "op-a"
        await gw_a.answer(wire, CommandStatus.SUCCEEDED)
        trail = (await get(f"/api/v1/commands/{wire.id}/audit", headers=op)).json()
        assert trail[0]["operator"] == "op-a"
        await asyncio.sleep(0.2)
        assert gw_b.commands.empty()

        audit = (await get("/api/v1/auth/audit", params={"username": "op-a"}, headers=admin)).json()
        refusals = [a for a in audit if a["action"] == "forbidden"]
        assert len(refusals) == 11
        assert {a["site_id"] for a in refusals} == {B}
        assert {a["permission"] for a in refusals} == {"read", "command", "register_gateway"}
        assert "POST /api/v1/devices/gate-b/commands" in {a["detail"] for a in refusals}


async def test_viewer_and_installer_cannot_command(broker_port: int, sqlite_url: str) -> None:
    async with (
        served(cloud_settings(broker_port, sqlite_url)) as c,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site=B, gateway="gw-b") as gw_b,
    ):
        await _two_estates(c, gw_a, gw_b)
        for name, role in (("vera", Role.VIEWER), ("ian", Role.INSTALLER)):
            who = await c.user(name, role, [A])
            assert (await c.http.get("/api/v1/devices/gate-1", headers=who)).status_code == 200
            resp = await c.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"}, headers=who)
            await _forbidden(resp)
            assert (await c.http.get("/api/v1/auth/users", headers=who)).status_code == 403
        await asyncio.sleep(0.2)
        assert gw_a.commands.empty()


async def test_stream_shows_only_the_callers_sites(broker_port: int, sqlite_url: str) -> None:
    async with (
        served(cloud_settings(broker_port, sqlite_url)) as c,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site=B, gateway="gw-b") as gw_b,
    ):
        await _two_estates(c, gw_a, gw_b)
        op = await c.user("op-a", Role.OPERATOR, [A])
        token = op["Authorization"].removeprefix("Bearer ")
        received: list[dict[str, Any]] = []
        # EventSource style: the token in the query string.
        async with c.http.stream(
            "GET", "/api/v1/stream", params={"access_token": token, "kinds": "event"}
        ) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            assert await asyncio.wait_for(anext(lines), 5) == "event: ready"
            assert json.loads((await anext(lines)).removeprefix("data: "))["kinds"] == ["event"]
            await gw_b.send_batch(
                make_batch([make_event("gate-b", "gate.closed", 2)], site=B, gateway="gw-b")
            )
            await gw_b.next_ack()
            await gw_a.send_batch(make_batch([make_event("gate-1", "gate.closed", 2)]))
            async with asyncio.timeout(5):
                async for line in lines:
                    if line.startswith("data: "):
                        received.append(json.loads(line.removeprefix("data: ")))
                        break
        assert [(e["site_id"], e["device_id"]) for e in received] == [(A, "gate-1")]


async def test_rejected_events_are_listed_by_site_and_paged(broker_port: int, sqlite_url: str) -> None:
    def with_bad_event(site: str, gateway: str, seq: int) -> bytes:
        batch = json.loads(
            make_batch([make_event("gate-1", "gate.opened", seq)], site=site, gateway=gateway).to_bytes()
        )
        batch["events"][0]["type"] = "Gate Opened"
        return json.dumps(batch).encode()

    async with (
        served(cloud_settings(broker_port, sqlite_url)) as c,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site=B, gateway="gw-b") as gw_b,
    ):
        for seq in (1, 2):
            await gw_a.send_raw("events", with_bad_event(A, "gw-1", seq))
            assert (await gw_a.next_ack()).rejected == 1
        await gw_b.send_raw("events", with_bad_event(B, "gw-b", 1))
        assert (await gw_b.next_ack()).rejected == 1
        admin = await c.user("root", Role.ADMIN)
        op = await c.user("op-a", Role.OPERATOR, [A])
        get = c.http.get

        everything = (await get("/api/v1/rejected-events", headers=admin)).json()["items"]
        assert sorted((r["site_id"], json.loads(r["payload"])["seq"]) for r in everything) == [
            (A, 1),
            (A, 2),
            (B, 1),
        ]
        assert all(r["error"].startswith("type: ") for r in everything)

        first = (await get("/api/v1/rejected-events", params={"limit": 1}, headers=op)).json()
        second = (
            await get(
                "/api/v1/rejected-events", params={"limit": 1, "cursor": first["next_cursor"]}, headers=op
            )
        ).json()
        assert [json.loads(r["payload"])["seq"] for r in first["items"] + second["items"]] == [
            2,
            1,
        ]  # newest first
        assert {r["site_id"] for r in first["items"] + second["items"]} == {A}
        assert second["next_cursor"] is None
        await _forbidden(await get("/api/v1/rejected-events", params={"site_id": B}, headers=op))
        bad_cursor = await get("/api/v1/rejected-events", params={"cursor": "nonsense"}, headers=op)
        assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["code"] == "bad_cursor"
