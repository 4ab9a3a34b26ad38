"""Readings history in time buckets (SQLite and PostgreSQL), clock skew flag, SSE stream, metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from protocol import CommandStatus, new_id
from tests.cloud.conftest import PG_URL, pg_available
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    eventually,
    make_batch,
    make_event,
    running_cloud,
    streaming,
)
from tests.stack import CloudDb


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_readings_bucketed_per_point(broker_port: int, sqlite_url: str, dialect: str) -> None:
    if dialect == "postgresql":
        if not pg_available():
            pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
        settings = cloud_settings(broker_port, PG_URL, database_schema=f"t_{new_id().lower()}")
    else:
        settings = cloud_settings(broker_port, sqlite_url)
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    events = [
        make_event("meter-1", "meter.reading", i, {"energy_kwh": 100.0 + i, "power_w": 500 + 100 * i}, ts=ts)
        for i, ts in enumerate(
            [t0, t0 + timedelta(minutes=20), t0 + timedelta(minutes=70), t0 + timedelta(hours=5)]
        )
    ]
    async with running_cloud(settings) as cloud, FakeGateway(broker_port) as gw:
        try:
            await gw.send_batch(make_batch(events))
            await gw.next_ack()
            resp = await cloud.http.get(
                "/api/v1/devices/meter-1/readings",
                params={"from": t0.isoformat(), "to": (t0 + timedelta(hours=2)).isoformat(), "bucket": "1h"},
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            series = {s["point"]: s["buckets"] for s in body["series"]}
            assert body["bucket_s"] == 3600
            assert [(b["count"], b["min"], b["max"]) for b in series["energy_kwh"]] == [
                (2, 100.0, 101.0),
                (1, 102.0, 102.0),
            ]
            assert [datetime.fromisoformat(b["start"]) for b in series["power_w"]] == [
                t0,
                t0 + timedelta(hours=1),
            ]
            assert series["power_w"][0]["avg"] == pytest.approx(550.0)
            bad = await cloud.http.get("/api/v1/devices/meter-1/readings", params={"bucket": "fortnight"})
            assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_query")
        finally:
            if settings.database_schema:
                import asyncpg

                conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
                await conn.execute(f'DROP SCHEMA "{settings.database_schema}" CASCADE')
                await conn.close()


async def test_readings_buckets_follow_the_estates_wall_clock(broker_port: int, cloud_db: CloudDb) -> None:
    """A day of readings is the estate's day: Shanghai's starts at 16:00 UTC the day before. Another zone
    may be asked for; across a clock change a day has the hours the clock gave it."""
    url, extra = cloud_db
    at = [
        datetime(2026, 3, 7, 15, 0, tzinfo=UTC),  # 23:00 in Shanghai, 10:00 in New York (EST)
        datetime(2026, 3, 7, 16, 30, tzinfo=UTC),  # 00:30 on the 8th in Shanghai
        datetime(2026, 3, 8, 12, 0, tzinfo=UTC),  # 08:00 on the 8th in New York (EDT since 07:00 UTC)
        datetime(2026, 3, 9, 3, 30, tzinfo=UTC),  # 23:30 on the 8th in New York
        datetime(2026, 3, 9, 4, 30, tzinfo=UTC),  # 00:30 on the 9th in New York
    ]
    events = [
        make_event("meter-1", "meter.reading", i, {"energy_kwh": float(i)}, ts=ts) for i, ts in enumerate(at)
    ]

    async def days(**params: str) -> tuple[str, list[tuple[datetime, int]]]:
        resp = await cloud.http.get("/api/v1/devices/meter-1/readings", params={"bucket": "1d", **params})
        assert resp.status_code == 200, resp.text
        (series,) = resp.json()["series"]
        return resp.json()["timezone"], [
            (datetime.fromisoformat(b["start"]), b["count"]) for b in series["buckets"]
        ]

    async with (
        running_cloud(cloud_settings(broker_port, url, **extra)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        await gw.send_status(online=True)  # its site config's zone: Asia/Shanghai
        await gw.send_batch(make_batch(events))
        await gw.next_ack()
        assert await days() == (
            "Asia/Shanghai",
            [
                (datetime(2026, 3, 6, 16, tzinfo=UTC), 1),  # the 7th, local
                (datetime(2026, 3, 7, 16, tzinfo=UTC), 2),
                (datetime(2026, 3, 8, 16, tzinfo=UTC), 2),
            ],
        )
        assert await days(tz="UTC") == (
            "UTC",
            [(datetime(2026, 3, d, tzinfo=UTC), n) for d, n in ((7, 2), (8, 1), (9, 2))],
        )
        assert (await days(tz="UTC", **{"from": "2026-03-08T00:00:00+00:00"}))[1] == [
            (datetime(2026, 3, 8, tzinfo=UTC), 1),
            (datetime(2026, 3, 9, tzinfo=UTC), 2),
        ]
        window = {"from": "2026-03-01T00:00:00+00:00", "to": "2026-04-01T00:00:00+00:00"}
        assert await days(tz="America/New_York", **window) == (
            "America/New_York",
            [
                (datetime(2026, 3, 7, 5, tzinfo=UTC), 2),  # the 7th, EST
                (datetime(2026, 3, 8, 5, tzinfo=UTC), 2),  # the 8th: 23 hours long
                (datetime(2026, 3, 9, 4, tzinfo=UTC), 1),  # the 9th, EDT
            ],
        )
        # A range of centuries costs no more than the last decades (the offsets are looked up per day).
        forever = {"from": "0001-01-01T00:00:00+00:00", "to": "9999-12-31T00:00:00+00:00", "bucket": "400d"}
        started = time.monotonic()
        resp = await cloud.http.get(
            "/api/v1/devices/meter-1/readings", params={"tz": "Asia/Tokyo", **forever}
        )
        assert time.monotonic() - started < 2
        assert resp.status_code == 200, resp.text
        assert sum(b["count"] for b in resp.json()["series"][0]["buckets"]) == len(at)
        # A year at one second would be a bucket per reading: refused, saying what to ask instead.
        year = {"from": "2026-01-01T00:00:00+00:00", "to": "2027-01-01T00:00:00+00:00"}
        too_fine = await cloud.http.get("/api/v1/devices/meter-1/readings", params={"bucket": "1s", **year})
        assert (too_fine.status_code, too_fine.json()["error"]["code"]) == (400, "bad_query")
        assert "31,536,000 buckets per point; at most 11,000" in too_fine.json()["error"]["message"]
        assert len((await days(tz="UTC", **year))[1]) == 3  # the same year by day is fine
        bad = await cloud.http.get("/api/v1/devices/meter-1/readings", params={"tz": "Mars/Olympus"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_query")
        assert "Mars/Olympus" in bad.json()["error"]["message"]


async def test_gateway_with_wrong_clock_is_flagged(broker_port: int, sqlite_url: str) -> None:
    settings = cloud_settings(broker_port, sqlite_url, max_clock_skew_s=60)
    async with running_cloud(settings) as cloud, FakeGateway(broker_port) as gw:
        ahead = datetime.now(UTC) + timedelta(minutes=10)
        await gw.send_batch(make_batch([make_event("gate-1", "gate.opened", 1)], sent_at=ahead))
        await gw.next_ack()
        (gateway,) = (await cloud.http.get("/api/v1/gateways")).json()["items"]
        assert gateway["clock_skewed"] is True
        assert gateway["clock_skew_s"] == pytest.approx(600, abs=5)
        assert "steward_cloud_gateways_clock_skewed 1" in (await cloud.http.get("/metrics")).text


async def test_stream_carries_events_and_command_updates(broker_port: int, sqlite_url: str) -> None:
    async with (
        running_cloud(cloud_settings(broker_port, sqlite_url)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        await gw.send_status(online=True)
        await eventually(lambda: _has_device(cloud.http, "gate-1"))
        async with streaming(cloud.http, kinds="event,command") as stream:
            assert stream.content_type.startswith("text/event-stream")
            await gw.send_batch(make_batch([make_event("gate-1", "gate.opened", 1)]))
            cmd = (await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "close"})).json()
            await gw.answer(await gw.next_command(), CommandStatus.SUCCEEDED)

            def both(got: list[tuple[str, dict[str, Any]]]) -> bool:
                seen = {(k, d.get("status") or d.get("type")) for k, d in got}
                # Results have their own ingest lane: no order between the two is promised.
                return {("command", "succeeded"), ("event", "gate.opened")} <= seen

            received = await stream.until(both)
        assert ("event", "gate.opened") in {(k, d.get("type")) for k, d in received}
        statuses = [d["status"] for k, d in received if k == "command" and d["id"] == cmd["id"]]
        assert statuses == ["sent", "succeeded"]


async def _has_device(http: object, device_id: str) -> bool:
    return (await http.get(f"/api/v1/devices/{device_id}")).status_code == 200  # type: ignore[attr-defined]
