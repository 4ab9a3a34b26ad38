"""Ingest over a real broker: dedupe on redelivery, ack after commit, bad payloads rejected, status/LWT."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import pytest

from cloud import store
from tests.cloud.support import (
    GATEWAY,
    SITE,
    FakeGateway,
    cloud_settings,
    eventually,
    make_batch,
    make_event,
    running_cloud,
)


async def test_redelivered_batch_is_stored_once_and_acked_twice(broker_port: int, sqlite_url: str) -> None:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        batch = make_batch([make_event("gate-1", "gate.opened", 1), make_event("gate-1", "gate.closed", 2)])
        await gw.send_batch(batch)
        first = await gw.next_ack()
        # The ack means "committed": the events are readable the moment it arrives.
        page = (await cloud.http.get("/api/v1/events", params={"device_id": "gate-1"})).json()
        assert [e["seq"] for e in page["items"]] == [2, 1]
        await gw.send_batch(batch)
        second = await gw.next_ack()
        assert (first.batch_id, first.stored, first.duplicates) == (batch.batch_id, 2, 0)
        assert (second.batch_id, second.stored, second.duplicates) == (batch.batch_id, 0, 2)
        page = (await cloud.http.get("/api/v1/events", params={"device_id": "gate-1"})).json()
        assert len(page["items"]) == 2
        device = (await cloud.http.get("/api/v1/devices/gate-1")).json()
        assert device["state"]["gate"]["value"] == "closed"


async def test_bad_payloads_are_rejected_counted_and_ingest_continues(
    broker_port: int, sqlite_url: str
) -> None:
    settings = cloud_settings(broker_port, sqlite_url, max_payload_bytes=64 * 1024)
    async with running_cloud(settings) as cloud, FakeGateway(broker_port) as gw:
        good = make_batch([make_event("meter-1", "meter.reading", 1, {"energy_kwh": 10.5})])
        forged = make_batch([make_event("meter-1", "meter.reading", 2)], gateway="gw-other")
        wrong_schema = json.loads(good.to_bytes())
        wrong_schema["sent_at"] = "yesterday"  # the batch itself, not one of its events (see below)
        await gw.send_raw("events", b"{not json")
        await gw.send_raw("events", json.dumps(wrong_schema).encode())
        await gw.send_raw("events", b"x" * (65 * 1024))
        await gw.send_raw("events", forged.to_bytes())
        await gw.send_batch(good)
        ack = await gw.next_ack()
        assert (ack.batch_id, ack.stored) == (good.batch_id, 1)
        assert gw.acks.empty()  # nothing was acknowledged for the rejected ones
        metrics = (await cloud.http.get("/metrics")).text
        for reason in ("malformed_json", "invalid_schema", "too_large", "gateway_mismatch"):
            assert f'steward_cloud_messages_rejected_total{{reason="{reason}"}} 1' in metrics
        assert "steward_cloud_events_stored_total 1" in metrics
        items = (await cloud.http.get("/api/v1/events")).json()["items"]
        assert [e["gateway_id"] for e in items] == [GATEWAY]


async def test_status_registers_devices_and_last_will_marks_gateway_offline(
    broker_port: int, sqlite_url: str
) -> None:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        await gw.send_status(online=True)

        async def registered() -> list[dict[str, object]]:
            return (await cloud.http.get("/api/v1/devices")).json()["items"]

        devices = await eventually(registered)
        assert {d["id"]: d["kind"] for d in devices} == {
            "gate-1": "barrier_gate",
            "door-1": "door_access",
            "meter-1": "smart_meter",
        }
        assert all(d["online"] is True for d in devices)
        # What people call it, for the console; a device the config does not name has none.
        names = {d["id"]: d["name"] for d in devices}
        assert names == {"gate-1": "North gate, inbound (北门入口道闸)", "door-1": None, "meter-1": None}
        sites = (await cloud.http.get("/api/v1/sites")).json()["items"]
        assert [(s["id"], s["name"], s["timezone"]) for s in sites] == [(SITE, "Estate A", "Asia/Shanghai")]
        # What the broker publishes for the gateway's Last Will:
        await gw.send_status(online=False, devices=[])

        async def offline() -> bool:
            gws = (await cloud.http.get("/api/v1/gateways")).json()["items"]
            return gws[0]["online"] is False

        await eventually(offline)
        devices = (await cloud.http.get("/api/v1/devices")).json()["items"]
        assert all(d["online"] is None for d in devices)


async def test_events_page_with_cursor_newest_first(broker_port: int, sqlite_url: str) -> None:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        events = [make_event("door-1", "door.unlocked", i) for i in range(1, 8)]
        await gw.send_batch(make_batch(events))
        await gw.next_ack()
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await cloud.http.get("/api/v1/events", params=params)).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted((e.id for e in events), reverse=True)
        bad = await cloud.http.get("/api/v1/events", params={"cursor": "@@"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "bad_cursor"


async def test_a_batch_the_store_refuses_holds_back_no_other_batch(
    broker_port: int, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches that queue up while a commit runs are committed together; when that transaction fails,
    each batch gets one of its own: the others are stored and acknowledged, the refused one is counted
    and not acknowledged (its gateway sends it again)."""
    batches = [make_batch([make_event("meter-1", "meter.reading", i, {"kwh": i})]) for i in range(1, 6)]
    refused = batches[3].batch_id
    original = store._store_group_sqlite
    calls: list[int] = []

    def store_group(conn: Any, touches: Any, work: Any, stamp: str) -> Any:
        calls.append(len(work))
        if len(calls) == 1:
            time.sleep(0.3)  # on the writer thread: the batches behind this one queue up meanwhile
        if any(batch.batch_id == refused for batch, _ in work):
            raise store._StatementError("INSERT INTO events", sqlite3.IntegrityError("refused for the test"))
        return original(conn, touches, work, stamp)

    monkeypatch.setattr(store, "_store_group_sqlite", store_group)
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        for batch in batches:
            await gw.send_batch(batch)
        acked = {(await gw.next_ack()).batch_id for _ in range(4)}
        assert acked == {b.batch_id for b in batches} - {refused}
        assert any(n > 1 for n in calls), calls  # a group of several batches was tried, and failed
        metrics = (await cloud.http.get("/metrics")).text
        assert "steward_cloud_events_stored_total 4" in metrics
        assert "steward_cloud_store_errors_total 1" in metrics
        items = (await cloud.http.get("/api/v1/events")).json()["items"]
        assert sorted(e["seq"] for e in items) == [1, 2, 3, 5]
        await asyncio.sleep(0.2)
        assert gw.acks.empty()


async def test_invalid_events_are_kept_as_received_and_the_rest_of_their_batch_is_stored(
    broker_port: int, sqlite_url: str
) -> None:
    """A batch refused whole was never acknowledged, so its gateway resent it for ever and its valid
    events never arrived. The valid ones are stored, the invalid ones kept in rejected_events with the
    reason, and the ack counts both, so the gateway can forget the batch."""
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        batch = make_batch(
            [make_event("meter-1", "meter.reading", seq, {"energy_kwh": 1.0}) for seq in (1, 2, 3)]
        )
        sent = json.loads(batch.to_bytes())
        sent["events"][1]["type"] = (
            "Meter Reading!"  # what an older gateway, or a damaged buffer row, might send
        )
        await gw.send_raw("events", json.dumps(sent).encode())
        ack = await gw.next_ack()
        assert (ack.batch_id, ack.stored, ack.duplicates, ack.rejected, ack.error) == (
            batch.batch_id,
            2,
            0,
            1,
            None,
        )
        items = (await cloud.http.get("/api/v1/events")).json()["items"]
        assert sorted(e["seq"] for e in items) == [1, 3]

        await gw.send_raw("events", json.dumps(sent).encode())  # resent: stored once, kept once
        again = await gw.next_ack()
        assert (again.stored, again.duplicates, again.rejected) == (0, 2, 1)

        everything_bad = make_batch([make_event("meter-1", "meter.reading", 9)])
        raw = json.loads(everything_bad.to_bytes())
        raw["events"][0]["seq"] = -1
        raw["events"].append("not an event")
        await gw.send_raw("events", json.dumps(raw).encode())
        last = await gw.next_ack()
        assert (last.batch_id, last.stored, last.rejected) == (everything_bad.batch_id, 0, 2)
        metrics = (await cloud.http.get("/metrics")).text
        assert "steward_cloud_events_rejected_total 4" in metrics
        assert (
            "messages_rejected_total"
            not in metrics.split("# TYPE steward_cloud_messages_rejected_total")[1].split("#")[0]
        )

    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as conn:
        kept = conn.execute(
            "SELECT gateway_id, batch_id, error, payload FROM rejected_events ORDER BY error"
        ).fetchall()
    assert [(g, b, e.split(":")[0]) for g, b, e, _ in kept] == [
        (GATEWAY, everything_bad.batch_id, "event"),
        (GATEWAY, everything_bad.batch_id, "seq"),
        (GATEWAY, batch.batch_id, "type"),
    ]
    assert json.loads(kept[0][3]) == "not an event"
    assert json.loads(kept[2][3]) == sent["events"][1]
