"""Two cloud instances on PostgreSQL share ingest through a Mosquitto shared subscription. One runs as
its own process (``steward cloud run``) and is killed with SIGKILL mid-stream: no shutdown, no goodbye
to the broker, transactions cut wherever they were. The gateway resends what was not acknowledged, as
the edge does; the survivor takes the work over, and PostgreSQL holds every event exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

from protocol import EventBatch, new_id
from tests.cloud.conftest import PG_URL, requires_mosquitto, requires_pg
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    free_port,
    make_batch,
    make_event,
    metric,
    reachable,
    running_cloud,
)

pytestmark = [requires_pg, requires_mosquitto]
ROOT = Path(__file__).resolve().parents[2]
STEWARD = [sys.executable, "-c", "from steward.cli import app; app()"]
BATCHES, PER_BATCH = 60, 5


@contextlib.contextmanager
def _cloud_process(env: dict[str, str], state: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``steward cloud run`` from this checkout, until the block ends (killed then, if still alive)."""
    log = (state / "cloud-a.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from steward.cli import app; app()",
            "cloud",
            "run",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


async def _send_and_collect_acks(
    gw: FakeGateway, batches: list[EventBatch], pending: dict[str, EventBatch]
) -> None:
    """Send ``batches``; then, like the edge's resender, resend whatever is unacknowledged after a pause,
    until every batch in ``pending`` is acknowledged."""
    for batch in batches:
        await gw.send_batch(batch)
    for _ in range(20):
        if not pending:
            return
        try:
            while pending:
                pending.pop((await gw.next_ack(timeout=2)).batch_id, None)
        except TimeoutError:
            for batch in list(pending.values()):
                await gw.send_batch(batch)
    assert not pending, f"{len(pending)} batches never acknowledged"


async def test_two_instances_one_killed_nothing_lost_or_duplicated() -> None:
    schema = f"t_{new_id().lower()}"
    prefix = f"t{new_id().lower()}"
    state = Path(tempfile.mkdtemp(prefix="steward-shared-"))
    a_port = free_port()
    a_env = {
        "STEWARD_CLOUD_DATABASE_URL": PG_URL,
        "STEWARD_CLOUD_DATABASE_SCHEMA": schema,
        "STEWARD_CLOUD_TOPIC_PREFIX": prefix,
        "STEWARD_CLOUD_SHARED_SUBSCRIPTION": "true",
        "STEWARD_CLOUD_CLIENT_ID": f"cloud-a-{prefix[-6:]}",
        "STEWARD_CLOUD_BROKER_PORT": "1883",
        "STEWARD_CLOUD_HTTP_PORT": str(a_port),
        "STEWARD_CLOUD_COMMAND_SIGNING_KEY_FILE": str(state / "command-signing.pem"),
        "STEWARD_CLOUD_BROKER_ACCOUNTS_FILE": str(state / "broker-accounts.json"),
    }
    batches = [
        make_batch([make_event("meter-1", "meter.reading", i * PER_BATCH + j) for j in range(PER_BATCH)])
        for i in range(BATCHES)
    ]
    expected = {e.id for batch in batches for e in batch.events}
    try:
        with _cloud_process(a_env, state) as proc_a:
            async with asyncio.timeout(60):
                while not reachable("127.0.0.1", a_port):  # it migrates the schema first
                    assert proc_a.poll() is None, (state / "cloud-a.log").read_text()[-2000:]
                    await asyncio.sleep(0.1)
            # B's HTTP port is picked only now: while A started, its own connections took ephemeral
            # ports, once the very one picked for B seconds before ("address already in use").
            b = cloud_settings(
                1883,
                PG_URL,
                client_id=f"cloud-b-{prefix[-6:]}",
                database_schema=schema,
                topic_prefix=prefix,
                shared_subscription=True,
                command_signing_key_file=state / "command-signing.pem",
                broker_accounts_file=state / "broker-accounts.json",
            )
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}", timeout=10) as http_a,
                running_cloud(b) as cloud_b,
                FakeGateway(1883, prefix=prefix) as gw,
            ):
                # Both instances take a share of the first third.
                first = batches[:20]
                await _send_and_collect_acks(gw, first, {x.batch_id: x for x in first})
                served_a = await metric(http_a, "steward_cloud_batches_total")
                served_b = await metric(cloud_b.http, "steward_cloud_batches_total")
                assert served_a > 0, "instance A took no share of the load"
                assert served_b > 0, "instance B took no share of the load"

                # Mid-stream: the second third is published, and A dies while it is being ingested. A
                # lock on the events table holds both instances' transactions open until A is dead, so
                # A surely dies with batches taken and not committed (without it, a fast machine had
                # acknowledged the whole third before the kill landed).
                second = batches[20:40]
                pending = {x.batch_id: x for x in second}
                blocker = await asyncpg.connect(
                    PG_URL.replace("+asyncpg", ""), server_settings={"search_path": schema}
                )
                try:
                    async with blocker.transaction():
                        await blocker.execute("LOCK TABLE events IN SHARE MODE")
                        for batch in second:
                            await gw.send_batch(batch)
                        await asyncio.sleep(0.5)  # both instances have taken their share and wait
                        os.kill(proc_a.pid, signal.SIGKILL)
                        assert await asyncio.to_thread(proc_a.wait, 10) == -signal.SIGKILL
                finally:
                    await blocker.close()
                await asyncio.sleep(0.5)
                while not gw.acks.empty():
                    pending.pop(gw.acks.get_nowait().batch_id, None)
                assert pending, "everything was acknowledged before the kill: not mid-stream"

                # The survivor takes over: the rest of the second third (resent where unacknowledged)
                # and everything after it.
                before = await metric(cloud_b.http, "steward_cloud_batches_total")
                await _send_and_collect_acks(gw, [], pending)
                third = batches[40:]
                await _send_and_collect_acks(gw, third, {x.batch_id: x for x in third})
                assert await metric(cloud_b.http, "steward_cloud_batches_total") >= before + len(third)

                page = (await cloud_b.http.get("/api/v1/events", params={"limit": 1000})).json()
                assert {e["id"] for e in page["items"]} == expected

        # What PostgreSQL holds: every event exactly once, nothing else.
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""), server_settings={"search_path": schema})
        try:
            rows = await conn.fetch("SELECT id FROM events")
        finally:
            await conn.close()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == BATCHES * PER_BATCH
        assert set(ids) == expected
    finally:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
