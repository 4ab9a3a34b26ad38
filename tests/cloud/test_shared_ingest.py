"""Two cloud instances on PostgreSQL share ingest through a Mosquitto shared subscription; one is
stopped mid-stream; the gateway resends what was not acknowledged; every event is stored exactly once."""

from __future__ import annotations

import contextlib

import asyncpg

from protocol import new_id
from tests.cloud.conftest import PG_URL, requires_mosquitto, requires_pg
from tests.cloud.support import FakeGateway, cloud_settings, make_batch, make_event, running_cloud

pytestmark = [requires_pg, requires_mosquitto]


async def _metric(http: object, name: str) -> int:
    text = (await http.get("/metrics")).text  # type: ignore[attr-defined]
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return int(float(line.split()[1]))


async def test_two_instances_one_stopped_nothing_lost_or_duplicated() -> None:
    schema = f"t_{new_id().lower()}"
    prefix = f"t{new_id().lower()}"
    common = {"database_schema": schema, "topic_prefix": prefix, "shared_subscription": True}
    a = cloud_settings(1883, PG_URL, client_id=f"cloud-a-{prefix[-6:]}", **common)
    b = cloud_settings(1883, PG_URL, client_id=f"cloud-b-{prefix[-6:]}", **common)
    batches = [
        make_batch([make_event("meter-1", "meter.reading", i * 5 + j) for j in range(5)]) for i in range(30)
    ]
    try:
        async with contextlib.AsyncExitStack() as stack:
            cloud_a = await stack.enter_async_context(running_cloud(a))  # migrates first
            async with running_cloud(b) as cloud_b, FakeGateway(1883, prefix=prefix) as gw:
                pending = {x.batch_id: x for x in batches}
                for batch in batches[:15]:
                    await gw.send_batch(batch)
                for _ in range(15):
                    pending.pop((await gw.next_ack()).batch_id, None)
                served_a = await _metric(cloud_a.http, "steward_cloud_batches_total")
                served_b = await _metric(cloud_b.http, "steward_cloud_batches_total")
                assert served_a > 0
                assert served_b > 0
                await stack.aclose()  # instance A goes away mid-stream
                for batch in batches[15:]:
                    await gw.send_batch(batch)
                for _ in range(10):  # resend rounds, as the edge does for unacknowledged batches
                    if not pending:
                        break
                    try:
                        while pending:
                            pending.pop((await gw.next_ack(timeout=1.5)).batch_id, None)
                    except TimeoutError:
                        for batch in pending.values():
                            await gw.send_batch(batch)
                assert not pending
                page = (await cloud_b.http.get("/api/v1/events", params={"limit": 1000})).json()
                ids = [e["id"] for e in page["items"]]
                assert len(ids) == len(set(ids)) == 150
    finally:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
