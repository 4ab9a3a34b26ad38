"""The API's reads never wait for a writer: another process holding the SQLite file's write lock (a
second instance's ingest, a migration, an operator's sqlite3 shell) must not hold up a console's GETs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.cloud.support import FakeGateway, cloud_settings, eventually, make_batch, make_event, running_cloud

READS = [
    "/api/v1/sites",
    "/api/v1/gateways",
    "/api/v1/devices",
    "/api/v1/devices/gate-1",
    "/api/v1/devices/meter-1/readings",
    "/api/v1/events",
    "/api/v1/events?device_id=gate-1",
    "/api/v1/rejected-events",
    "/api/v1/commands",
    "/api/v1/work-orders",
    "/api/v1/work-orders/1",
    "/api/v1/reports/work-orders",
    "/api/v1/sites/estate-a/credentials",
    "/api/v1/gateways/gw-1/commissioning",
]


async def test_reads_answer_while_another_process_holds_the_write_lock(
    broker_port: int, sqlite_url: str, tmp_path: Path
) -> None:
    settings = cloud_settings(broker_port, sqlite_url)
    async with running_cloud(settings) as cloud, FakeGateway(broker_port) as gw:
        await gw.send_status(online=True)
        reading = make_event("meter-1", "meter.reading", 1, {"kwh": 1})
        await gw.send_batch(make_batch([reading, make_event("gate-1", "gate.opened", 2)]))
        await gw.next_ack()

        async def ready() -> bool:
            # Planned maintenance opens work order 1 for the new site.
            return (await cloud.http.get("/api/v1/work-orders/1")).status_code == 200

        await eventually(ready, timeout=15)

        holder = sqlite3.connect(tmp_path / "cloud.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process's writer has it
            for path in READS:
                # A read that took the write lock would wait here for busy_timeout (30 s).
                resp = await asyncio.wait_for(cloud.http.get(path), 3)
                assert resp.status_code == 200, (path, resp.text)
            events = (await cloud.http.get("/api/v1/events")).json()["items"]
            assert sorted(e["type"] for e in events) == ["gate.opened", "meter.reading"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
