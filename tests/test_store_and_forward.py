"""Nothing lost, nothing duplicated, order per device kept — asserted on the cloud's own store.

The gateway's sequence numbers come from its SQLite buffer (AUTOINCREMENT, never reused) and no
test here fills the buffer, so every event ever recorded has a seq in 1..N: the cloud must end up
with exactly those N, each once. A gap is a lost event; a second row is a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward.broker import EmbeddedBroker, free_port
from tests.stack import site_config

pytestmark = pytest.mark.timeout(180)


def meters(port: int, n: int = 3, interval: float = 0.05) -> list[dict[str, Any]]:
    return [
        {
            "id": f"meter-{i}",
            "kind": "smart_meter",
            "model": "sdm120",
            "transport": {
                "type": "modbus_tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit": i,
                "timeout_s": 0.5,
            },
            "poll_interval_s": interval,
        }
        for i in range(1, n + 1)
    ]


def cloud_rows(db: Path, gateway: str = "gw-1") -> list[tuple[int, str, str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT seq, id, device_id, ts FROM events WHERE gateway_id = ? ORDER BY seq", (gateway,)
        ).fetchall()


def assert_exactly_once_in_order(rows: list[tuple[int, str, str, str]], at_least: int) -> None:
    seqs = [r[0] for r in rows]
    assert len(seqs) >= at_least, f"only {len(seqs)} events reached the cloud"
    assert len(set(seqs)) == len(seqs), "an event was stored twice"
    assert seqs == list(range(1, len(seqs) + 1)), (
        f"events lost: missing {sorted(set(range(1, max(seqs) + 1)) - set(seqs))[:20]}"
    )
    by_device: dict[str, list[str]] = {}
    for _, _, device, ts in rows:
        by_device.setdefault(device, []).append(ts)
    for device, stamps in by_device.items():
        assert stamps == sorted(stamps), f"{device}: events out of order by gateway sequence"


async def buffered_depth(gateway: Any) -> int:
    return int((await gateway.buffer.stats()).depth)


async def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def cloud(db: Path, broker_port: int) -> AsyncIterator[asyncio.Task[None]]:
    from cloud.main import serve
    from cloud.settings import CloudSettings

    settings = CloudSettings(
        database_url=f"sqlite+aiosqlite:///{db}",
        broker_port=broker_port,
        http_port=free_port(),
        client_id="cloud-t",
    )
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def gateway_in_process(site: Any) -> AsyncIterator[Any]:
    from edge.gateway import Gateway

    gw = Gateway(site)
    task = asyncio.create_task(gw.run())
    try:
        async with asyncio.timeout(20):
            await gw.started.wait()
        yield gw
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            # A gateway that ignores cancellation would hang shutdown: show who is stuck.
            for t in asyncio.all_tasks():
                t.print_stack(limit=8)
            raise AssertionError("gateway did not stop within 30 s of being cancelled")


async def test_broker_restarted_mid_drain(tmp_path: Path) -> None:
    from simulators.registry import run_site_simulators

    port = free_port()
    broker = EmbeddedBroker(port=port)
    site = site_config(tmp_path, port, meters(free_port()))
    async with run_site_simulators(site):
        async with gateway_in_process(site) as gw:
            # The broker is not even up yet: a backlog builds in the buffer.
            await wait_until(lambda: _gt(buffered_depth(gw), 150), 30, "a backlog of 150 events")
            await broker.start()
            async with cloud(tmp_path / "cloud.db", port):
                await wait_until(lambda: _rows_at_least(tmp_path / "cloud.db", 20), 20, "drain started")
                await broker.stop()  # mid-drain
                await asyncio.sleep(1.0)
                await broker.start()
                await asyncio.sleep(0.5)
            # Cloud restarted as well (its own session was cut with the broker); then let it all drain.
            async with cloud(tmp_path / "cloud.db", port):
                await wait_until(lambda: _eq(buffered_depth(gw), 0), 60, "buffer drained")
        await broker.stop()
    assert_exactly_once_in_order(cloud_rows(tmp_path / "cloud.db"), at_least=150)


async def test_cloud_restarted_mid_drain_and_link_cut_past_resend_timeout(tmp_path: Path) -> None:
    from simulators.registry import run_site_simulators

    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, meters(free_port()))
        db = tmp_path / "cloud.db"
        async with run_site_simulators(site), gateway_in_process(site) as gw:
            await wait_until(lambda: _gt(buffered_depth(gw), 150), 30, "a backlog of 150 events")
            async with cloud(db, broker.port):
                await wait_until(lambda: _rows_at_least(db, 20), 20, "drain started")
            # Cloud gone for longer than the resend timeout (3 s): batches go unacknowledged, are resent.
            await asyncio.sleep(site.buffer.resend_timeout_s + 2)
            assert gw.uplink.stats.resends > 0
            async with cloud(db, broker.port):
                await wait_until(lambda: _eq(buffered_depth(gw), 0), 60, "buffer drained")
    assert_exactly_once_in_order(cloud_rows(db), at_least=150)


async def test_gateway_killed_with_sigkill_loses_nothing(tmp_path: Path) -> None:
    """A gateway process killed -9 while polling and sending; restarted; every recorded event arrives once."""
    from simulators.registry import run_site_simulators

    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, meters(free_port()))
        cfg = tmp_path / "site.yaml"
        cfg.write_text(yaml.safe_dump(site.model_dump(mode="json", exclude_none=True)))
        db = tmp_path / "cloud.db"
        async with run_site_simulators(site), cloud(db, broker.port):
            for round_ in range(2):
                proc = gateway_process(cfg)
                try:
                    want = 60 * (round_ + 1)
                    await wait_until(lambda n=want: _rows_at_least(db, n), 30, "events flowing")
                finally:
                    proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
            # Both killed gateways left events recorded but unsent; the highest seq ever recorded:
            with contextlib.closing(sqlite3.connect(site.buffer.path)) as conn:
                last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0]
            proc = gateway_process(cfg)
            try:
                await wait_until(
                    lambda: _rows_at_least(db, last), 30, f"all {last} recorded events in the cloud"
                )
            finally:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
    assert_exactly_once_in_order([r for r in cloud_rows(db) if r[0] <= last], at_least=last)


def gateway_process(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "steward.cli", "edge", "run", "--config", str(cfg), "--log-level", "ERROR"],
        cwd=Path(__file__).parent.parent,
    )


async def _gt(value: Any, n: int) -> bool:
    return bool(await value > n)


async def _eq(value: Any, n: int) -> bool:
    return bool(await value == n)


async def _rows_at_least(db: Path, n: int) -> bool:
    def count() -> int:
        if not db.exists():
            return 0
        try:
            return len(cloud_rows(db))
        except sqlite3.OperationalError:
            return 0  # the cloud has not created its tables yet

    return await asyncio.to_thread(count) >= n


async def test_large_events_leave_in_batches_the_cloud_accepts(tmp_path: Path) -> None:
    """A batch is bounded in bytes as well as in events: 40 events of ~48 KB each are ~2 MB, twice the
    cloud's limit on a message. Bounded by count only they left as one batch that the cloud refused
    (too large) and that was never acknowledged, so resent for ever and none of them arrived."""
    from edge.buffer import EventBuffer, EventDraft
    from protocol.models import utcnow

    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, [])
        async with await EventBuffer.open(site.buffer) as buf:
            await buf.record_many(
                [
                    EventDraft("intercom-1", "intercom.call", utcnow(), {"i": i, "sdp": "v=0" * 16_000})
                    for i in range(40)
                ]
            )
        db = tmp_path / "cloud.db"
        async with cloud(db, broker.port), gateway_in_process(site) as gw:
            await wait_until(lambda: _eq(buffered_depth(gw), 0), 30, "buffer drained")
            batches = gw.uplink.stats.batches_sent
        rows = cloud_rows(db)
    assert_exactly_once_in_order(rows, at_least=40)
    assert len(rows) == 40
    assert batches >= 40 * 48_000 // site.buffer.max_batch_bytes


async def test_an_event_the_cloud_refuses_is_kept_there_and_the_drain_goes_on(tmp_path: Path) -> None:
    """A buffered row the cloud's schema refuses (written by an older gateway, or damaged) used to get its
    whole batch refused and never acknowledged: the batch went again after the resend timeout, and on
    that path the gateway dropped the row. Now the cloud stores the rest at once and keeps that event as
    received, and the batch is acknowledged the first time."""
    from edge.buffer import EventBuffer, EventDraft
    from protocol import new_id
    from protocol.models import utcnow

    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, [])
        async with await EventBuffer.open(site.buffer) as buf:
            await buf.record_many(
                [EventDraft("meter-1", "meter.reading", utcnow(), {"i": i}) for i in range(10)]
            )
        with contextlib.closing(sqlite3.connect(site.buffer.path)) as raw, raw:
            raw.execute(
                "INSERT INTO events (seq, id, device_id, type, severity, ts, received_at, payload)"
                " VALUES (11, ?, 'meter-1', 'Meter Reading!', 3, ?, ?, '{\"d\":{}}')",
                (new_id(), 1_790_000_000_000_000, 1_790_000_000_000_000),
            )
        db = tmp_path / "cloud.db"
        async with cloud(db, broker.port), gateway_in_process(site) as gw:
            await wait_until(lambda: _eq(buffered_depth(gw), 0), 20, "buffer drained")
            assert gw.uplink.stats.resends == 0
        rows = cloud_rows(db)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            kept = conn.execute("SELECT gateway_id, error, payload FROM rejected_events").fetchall()
    assert [r[0] for r in rows] == list(range(1, 11))
    assert len(kept) == 1 and kept[0][0] == "gw-1" and kept[0][1].startswith("type: ")
    assert json.loads(kept[0][2])["type"] == "Meter Reading!"
