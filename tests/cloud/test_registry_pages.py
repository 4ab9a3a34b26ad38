"""The registry's lists page by cursor, and the live stream narrows to one estate: what lets one
operations centre run hundreds of estates without each console reading every device and event."""

from __future__ import annotations

from typing import Any

import httpx

from protocol import DeviceInfo
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    eventually,
    make_batch,
    make_event,
    running_cloud,
    streaming,
)

SITES = {
    "estate-a": ["gate-a1", "gate-a2", "door-a1"],
    "estate-b": ["gate-b1"],
    "estate-c": ["door-c1", "door-c2", "meter-c1", "meter-c2", "meter-c3"],
}
KINDS = {"gate": "barrier_gate", "door": "door_access", "meter": "smart_meter"}


def _devices(ids: list[str]) -> list[DeviceInfo]:
    return [DeviceInfo(id=i, kind=KINDS[i.split("-")[0]], model="generic") for i in ids]


async def _walk(http: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, one page of ``limit`` at a time."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        resp = await http.get(path, params=params | ({"cursor": cursor} if cursor else {}))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) <= params["limit"]
        items += body["items"]
        if not (cursor := body["next_cursor"]):
            return items


async def test_sites_gateways_and_devices_page_by_cursor(broker_port: int, sqlite_url: str) -> None:
    async with running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud:
        http = cloud.http
        for n, (site, ids) in enumerate(SITES.items()):
            async with FakeGateway(broker_port, site=site, gateway=f"gw-{n}") as gw:
                await gw.send_status(online=True, devices=_devices(ids))

        async def registered() -> bool:
            return len((await http.get("/api/v1/devices")).json()["items"]) == 9

        await eventually(registered)
        devices = await _walk(http, "/api/v1/devices", limit=2)
        assert [(d["site_id"], d["id"]) for d in devices] == sorted((s, i) for s in SITES for i in SITES[s])
        meters = await _walk(http, "/api/v1/devices", limit=1, site_id="estate-c", kind="smart_meter")
        assert [d["id"] for d in meters] == ["meter-c1", "meter-c2", "meter-c3"]
        assert [g["id"] for g in await _walk(http, "/api/v1/gateways", limit=1)] == ["gw-0", "gw-1", "gw-2"]
        sites = await _walk(http, "/api/v1/sites", limit=2)
        assert [s["id"] for s in sites] == list(SITES)
        # Each estate says what it has, so a list of estates needs no device list.
        assert [s["devices"] for s in sites] == [
            {"barrier_gate": 2, "door_access": 1},
            {"barrier_gate": 1},
            {"door_access": 2, "smart_meter": 3},
        ]

        for path in ("/api/v1/devices", "/api/v1/gateways", "/api/v1/sites"):
            resp = await http.get(path, params={"cursor": "nonsense"})
            assert (resp.status_code, resp.json()["error"]["code"]) == (400, "bad_cursor"), path
            resp = await http.get(path, params={"limit": 0})
            assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_request"), path
        # A cursor of one list is refused by another.
        page = (await http.get("/api/v1/gateways", params={"limit": 1})).json()
        resp = await http.get("/api/v1/devices", params={"cursor": page["next_cursor"]})
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "bad_cursor")


async def test_the_stream_narrows_to_one_estate(broker_port: int, sqlite_url: str) -> None:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port, site="estate-a", gateway="gw-a") as gw_a,
        FakeGateway(broker_port, site="estate-b", gateway="gw-b") as gw_b,
    ):
        await gw_a.send_status(online=True, devices=_devices(SITES["estate-a"]))
        await gw_b.send_status(online=True, devices=_devices(SITES["estate-b"]))

        async def registered() -> bool:
            return len((await cloud.http.get("/api/v1/devices")).json()["items"]) == 4

        await eventually(registered)
        async with streaming(cloud.http, kinds="event,gateway", site_id="estate-a") as stream:
            for gw, device in ((gw_b, "gate-b1"), (gw_a, "gate-a1")):
                event = make_event(device, "gate.opened", 1)
                await gw.send_batch(make_batch([event], site=gw.site, gateway=gw.gateway))
                await gw.next_ack()
            await gw_b.send_status(online=False)
            await gw_a.send_status(online=False)
            received = await stream.until(lambda r: any(k == "gateway" and d["id"] == "gw-a" for k, d in r))
        # Estate B's event and gateway came first, and were not sent.
        sent = [(k, d.get("device_id") or d.get("id")) for k, d in received]
        assert sent == [("event", "gate-a1"), ("gateway", "gw-a")]
