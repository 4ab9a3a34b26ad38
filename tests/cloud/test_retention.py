"""Retention (cloud/retention.py) on SQLite and PostgreSQL: old events, readings and rejected events go,
a chunk per transaction; recent ones, a skewed gateway's just-stored events and the command audit stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import cloud.retention
from cloud import CloudSettings
from cloud.db import make_engine, make_sessions, upgrade
from cloud.metrics import Metrics
from cloud.retention import Pruned, Retention
from cloud.tables import CommandAudit, EventRow, Reading, RejectedEvent
from protocol import new_id
from protocol.ids import id_floor, id_timestamp_ms
from tests.cloud.conftest import PG_URL, requires_pg

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=400)
RECENT = NOW - timedelta(days=10)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _event(created: datetime, stored: datetime, seq: int) -> dict[str, Any]:
    return {
        "id": id_floor(_ms(created))[:10] + new_id()[10:],  # a ULID of that time, as a gateway makes one
        "site_id": "estate-a",
        "gateway_id": "gw-1",
        "seq": seq,
        "device_id": "gate-1",
        "type": "gate.opened",
        "severity": "info",
        "ts": created,
        "received_at": created,
        "stored_at": stored,
        "location": None,
        "data": {},
    }


def _readings(device: str, point: str, at: datetime, count: int) -> list[dict[str, Any]]:
    return [
        {"device_id": device, "point": point, "ts_ms": _ms(at) + i * 60_000, "value": float(i)}
        for i in range(count)
    ]


def _rejected(at: datetime) -> dict[str, Any]:
    key = new_id()
    return {
        "key": key,
        "site_id": "estate-a",
        "gateway_id": "gw-1",
        "batch_id": "b",
        "error": "type: bad",
        "payload": "{}",
        "received_at": at,
    }


async def _fill(sessions: async_sessionmaker[AsyncSession]) -> None:
    events = [
        *(_event(OLD, OLD, seq) for seq in range(1, 8)),  # 7 old
        *(_event(RECENT, RECENT, seq) for seq in range(8, 10)),  # 2 recent
        _event(OLD, RECENT, 10),  # a gateway whose clock was 400 days behind, stored ten days ago
    ]
    readings = [
        *_readings("meter-1", "energy_kwh", OLD, 7),
        *_readings("meter-1", "energy_kwh", RECENT, 2),
        *_readings("meter-1", "power_w", OLD, 4),
        *_readings("meter-2", "energy_kwh", OLD, 3),
    ]
    audit = {
        "command_id": "c",
        "operator": "op",
        "device_id": "gate-1",
        "action": "open",
        "status": "succeeded",
        "reason": None,
        "at": OLD,
    }
    async with sessions() as s, s.begin():
        await s.execute(insert(EventRow), events)
        await s.execute(insert(Reading), readings)
        await s.execute(insert(RejectedEvent), [*(_rejected(OLD) for _ in range(4)), _rejected(RECENT)])
        await s.execute(insert(CommandAudit), [audit])


async def _counts(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as s:
        return {
            table.__tablename__: int(await s.scalar(select(func.count()).select_from(table)) or 0)
            for table in (EventRow, Reading, RejectedEvent, CommandAudit)
        }


def _settings(**days: float) -> CloudSettings:
    return CloudSettings(**{f"retention_{kind}_days": value for kind, value in days.items()})


async def test_old_history_goes_a_chunk_at_a_time_and_the_rest_stays(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill(sessions)
    monkeypatch.setattr(cloud.retention, "CHUNK_ROWS", 3)
    deleted_per_transaction: list[int] = []
    real_delete = cloud.retention._delete

    def counting_delete(conn: Connection, statement: Any, params: dict[str, Any]) -> int:
        n = real_delete(conn, statement, params)
        deleted_per_transaction.append(n)
        return n

    monkeypatch.setattr(cloud.retention, "_delete", counting_delete)
    metrics = Metrics()
    retention = Retention(
        _settings(events=365, readings=365, rejected=90), sessions, metrics, clock=lambda: NOW
    )

    assert await retention.prune_once() == Pruned(events=7, readings=14, rejected=4)
    assert await _counts(sessions) == {"events": 3, "readings": 2, "rejected_events": 1, "command_audit": 1}
    assert max(deleted_per_transaction) == 3 and len(deleted_per_transaction) > 6
    async with sessions() as s:
        kept = (await s.execute(select(EventRow.id, EventRow.stored_at))).all()
        left = (await s.execute(select(Reading.device_id, Reading.point, Reading.ts_ms))).all()
    # The skewed gateway's event (an id from 400 days ago) stays: it was stored ten days ago.
    assert sorted(id_timestamp_ms(i) < _ms(NOW - timedelta(days=365)) for i, _ in kept) == [
        False,
        False,
        True,
    ]
    assert {(d, p) for d, p, _ in left} == {("meter-1", "energy_kwh")}
    assert all(ts >= _ms(RECENT) for _, _, ts in left)
    assert (metrics.pruned["events"], metrics.pruned["readings"], metrics.pruned["rejected_events"]) == (
        7,
        14,
        4,
    )

    assert await retention.prune_once() == Pruned()  # nothing more to do


async def test_zero_days_keeps_that_kind_for_ever(sessions: async_sessionmaker[AsyncSession]) -> None:
    await _fill(sessions)
    before = await _counts(sessions)
    retention = Retention(_settings(events=0, readings=0, rejected=0), sessions, Metrics(), clock=lambda: NOW)
    assert await retention.prune_once() == Pruned()
    assert await _counts(sessions) == before
    # Each kind on its own: readings only.
    only_readings = Retention(
        _settings(events=0, readings=30, rejected=0), sessions, Metrics(), clock=lambda: NOW
    )
    assert await only_readings.prune_once() == Pruned(readings=14)
    assert await _counts(sessions) == {**before, "readings": 2}


def test_the_id_floor_sorts_below_every_id_of_its_millisecond_and_above_earlier_ones() -> None:
    ms = _ms(NOW)
    floor = id_floor(ms)
    assert id_timestamp_ms(floor) == ms
    same = [id_floor(ms)[:10] + new_id()[10:] for _ in range(100)]
    earlier = [id_floor(ms - 1)[:10] + new_id()[10:] for _ in range(100)]
    assert all(floor <= i for i in same) and all(i < floor for i in earlier)


@requires_pg
async def test_on_postgresql_one_instance_prunes_at_a_time() -> None:
    """Several instances share one PostgreSQL: a pass runs on one of them; the others skip theirs."""
    settings = CloudSettings(database_url=PG_URL, database_schema=f"t_{new_id().lower()}")
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        sessions = make_sessions(engine)
        await _fill(sessions)
        first, second = (Retention(settings, sessions, Metrics(), clock=lambda: NOW) for _ in range(2))
        async with first._turn() as ours:  # the first instance's pass is under way
            assert ours
            assert await second.prune_once() == Pruned()
            assert (await _counts(sessions))["events"] == 10
        assert await second.prune_once() == Pruned(events=7, readings=14, rejected=4)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{settings.database_schema}" CASCADE'))
        await engine.dispose()
