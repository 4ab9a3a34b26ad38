"""The command log (``GET /commands``): every operator's commands at the caller's estates, newest first,
filtered and paged, on SQLite and PostgreSQL, through the real cloud, broker and a gateway on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from cloud.api.paging import encode
from cloud.auth import Role, create_user
from protocol import CommandStatus, DeviceInfo
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    eventually,
    login,
    running_cloud,
)
from tests.stack import CloudDb

B = "estate-b"


async def _as(http: httpx.AsyncClient, settings: Any, username: str, sites: list[str]) -> dict[str, str]:
    password = await create_user(settings, username, f"pw-{username}-0123456789", Role.OPERATOR, sites)
    bare = httpx.AsyncClient(base_url=str(http.base_url), timeout=10)
    async with bare:
        return {"Authorization": f"Bearer {await login(bare, username, password)}"}


async def test_the_log_lists_every_operators_commands_newest_first(
    broker_port: int, cloud_db: CloudDb
) -> None:
    url, extra = cloud_db
    settings = cloud_settings(broker_port, url, **extra)
    async with (
        running_cloud(settings) as cloud,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site=B, gateway="gw-b") as gw_b,
    ):
        http = cloud.http
        await gw_a.send_status(online=True)
        await gw_b.send_status(online=True, devices=[DeviceInfo(id="gate-b", kind="barrier_gate", model="g")])

        async def registered() -> bool:
            devices = (await http.get("/api/v1/devices")).json()["items"]
            return {"gate-1", "door-1", "gate-b"} <= {d["id"] for d in devices}

        await eventually(registered)
        op_a = await _as(http, settings, "op-a", ["estate-a"])
        op_b = await _as(http, settings, "op-b", [B])

        Headers = dict[str, str] | None

        async def issue(headers: Headers, device: str, action: str, **args: Any) -> dict[str, Any]:
            resp = await http.post(
                f"/api/v1/devices/{device}/commands",
                json={"action": action, "args": args, "reason": f"{action} {device}"},
                headers=headers,
            )
            assert resp.status_code == 202, resp.text
            return dict(resp.json())

        first = await issue(None, "gate-1", "open")
        await gw_a.answer(await gw_a.next_command(), CommandStatus.SUCCEEDED, gate="open")
        second = await issue(op_a, "door-1", "unlock", duration_s=5)
        await gw_a.answer(await gw_a.next_command(), CommandStatus.FAILED, "lock jammed")
        third = await issue(op_a, "gate-1", "open")
        fourth = await issue(op_b, "gate-b", "open")  # left unanswered: still sent
        await gw_b.next_command()

        async def listed(params: dict[str, Any] | None = None, headers: Headers = None) -> list[str]:
            resp = await http.get("/api/v1/commands", params=params, headers=headers)
            assert resp.status_code == 200, resp.text
            return [c["id"] for c in resp.json()["items"]]

        async def settled() -> bool:
            items = (await http.get("/api/v1/commands")).json()["items"]
            return [c["status"] for c in items] == ["sent", "sent", "failed", "succeeded"]

        await eventually(settled)
        everything = (await http.get("/api/v1/commands")).json()
        newest_first = [fourth["id"], third["id"], second["id"], first["id"]]
        assert [c["id"] for c in everything["items"]] == newest_first
        assert everything["next_cursor"] is None
        by_id = {c["id"]: c for c in everything["items"]}
        unlock = by_id[second["id"]]
        assert (unlock["issued_by"], unlock["result_reason"]) == ("op-a", "lock jammed")
        assert by_id[first["id"]]["final"] and not by_id[fourth["id"]]["final"]
        assert unlock["args"] == {"duration_s": 5}

        # Each operator sees their own estate's log, every operator's commands in it, and no other.
        assert await listed(headers=op_a) == [third["id"], second["id"], first["id"]]
        assert await listed(headers=op_b) == [fourth["id"]]
        refused = await http.get("/api/v1/commands", params={"site_id": B}, headers=op_a)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
        assert await listed({"device_id": "gate-b"}, op_a) == []

        assert await listed({"site_id": "estate-a", "device_id": "gate-1"}) == [third["id"], first["id"]]
        assert await listed({"issued_by": "op-a"}) == [third["id"], second["id"]]
        assert await listed({"status": "failed"}) == [second["id"]]
        assert await listed({"action": "unlock", "gateway_id": "gw-1"}) == [second["id"]]
        window = {"from": second["issued_at"], "to": fourth["issued_at"]}
        assert await listed(window) == [third["id"], second["id"]]

        # Paging one at a time walks the same list, with nothing twice.
        walked, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            page = (await http.get("/api/v1/commands", params=params)).json()
            walked += [c["id"] for c in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        assert walked == newest_first

        # Clear errors for what cannot be answered.
        bad = {
            "status": ("bogus", 422, "invalid_request"),
            "from": (datetime(2026, 1, 1).isoformat(), 400, "bad_query"),
            "cursor": ("nonsense", 400, "bad_cursor"),
            "limit": ("0", 422, "invalid_request"),
        }
        for name, (value, code, error) in bad.items():
            resp = await http.get("/api/v1/commands", params={name: value})
            assert (resp.status_code, resp.json()["error"]["code"]) == (code, error), (name, resp.text)
        # A cursor of the events list is not one of this list's.
        resp = await http.get("/api/v1/commands", params={"cursor": encode("i", first["id"])})
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "bad_cursor")
