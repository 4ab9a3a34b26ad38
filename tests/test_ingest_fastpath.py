"""The backlog-drain fast paths give the same stored rows and work orders as the general ones.

- ``RuleIndex.relevant`` (work orders' ingest listener) answers as ``RuleSet.relevant(event_fields(...))``
  and asks no rule anything for an event type no rule names.
- On SQLite, ``ingest_batch`` and ``touch_batch_gateway`` talk to aiosqlite directly: their rows must be
  byte for byte what SQLAlchemy writes for the same values, and a redelivery (some events already
  stored) must leave the same state as one batch.
- Over a real broker, the running cloud still opens a work order for a reading above the limit.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text
from sqlalchemy.exc import SQLAlchemyError

from cloud import db as cloud_db
from cloud import store
from cloud.state import merge_state, numeric_points, state_updates
from cloud.tables import Device, EventRow, Reading
from cloud.workorders import rules as rules_mod
from cloud.workorders.rules import RuleSet, event_fields, load_rules, parse_rules
from cloud.workorders.settings import SHIPPED_CONFIG
from protocol import Event, EventBatch, Location, new_id
from protocol.models import event_severity
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    embedded_broker,
    eventually,
    make_batch,
    make_event,
    running_cloud,
)
from tests.workorders.support import T0, Clock, Db, database, service, skip_without_pg

SHIPPED = load_rules(SHIPPED_CONFIG / "rules.yaml")
# Paths the fast index does not read inline (nested data, location, envelope fields) and conditions that
# hold for a missing field (exists: false, ne, in with null), so both of its branches are compared.
EXTRA = parse_rules(
    {
        "rules": [
            {
                "id": "nested",
                "title": "t",
                "on": ["meter.reading", "sensor.threshold_exceeded"],
                "where": {"data.points.flow": {"gt": 1}, "location.area": "roof"},
                "category": "c",
                "team": "x",
            },
            {
                "id": "absent",
                "title": "t",
                "on": ["meter.reading"],
                "where": {"data.power_w": {"exists": False}, "device_id": {"ne": "meter-9"}},
                "category": "c",
                "team": "x",
            },
            {
                "id": "listed",
                "title": "t",
                "on": ["door.closed"],
                "where": {"data.reason": {"in": [None, "wind"]}, "site_id": "oak"},
                "category": "c",
                "team": "x",
                "clear": {"on": ["door.opened"], "where": {"data": {"exists": True}}},
            },
            {"id": "gw-off", "title": "t", "kind": "offline", "target": "device", "after": "5m"}
            | {"category": "c", "team": "x"},
        ]
    }
)

_TYPES = sorted(SHIPPED.event_types() | EXTRA.event_types() | {"meter.reading", "sensor.reading", "x.y"})
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-50_000, 50_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["pressure", "temperature", "wind", "Z3", "", "30001"]),
)
_DATA = st.dictionaries(
    st.sampled_from(["power_w", "metric", "panel", "zone", "reason", "kwh"]),
    _VALUES,
    max_size=4,
).flatmap(
    lambda flat: st.one_of(
        st.just(flat),
        st.dictionaries(st.just("flow"), _VALUES, max_size=1).map(lambda p: {**flat, "points": p}),
    )
)
_LOCATION = st.one_of(
    st.none(),
    st.builds(
        Location,
        building=st.sampled_from([None, "A", "C"]),
        area=st.sampled_from([None, "roof", "pump room", "basement"]),
    ),
)


@st.composite
def _events(draw: st.DrawFn) -> Event:
    return Event(
        id=new_id(),
        seq=1,
        device_id=draw(st.sampled_from(["meter-1", "meter-9", "door-1"])),
        type=draw(st.sampled_from(_TYPES)),
        ts=T0,
        received_at=T0,
        location=draw(_LOCATION),
        data=draw(_DATA),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=_events(), site=st.sampled_from(["oak", "elm"]))
def test_rule_index_answers_as_relevant(event: Event, site: str) -> None:
    for ruleset in (SHIPPED, EXTRA):
        expected = ruleset.relevant(event_fields(site, "gw-1", event))
        assert ruleset.index().relevant(site, "gw-1", event) is expected


def test_rule_index_covers_exactly_the_types_rules_act_on() -> None:
    for ruleset in (SHIPPED, EXTRA, RuleSet()):
        assert set(ruleset.index().by_type) == ruleset.event_types()


async def test_event_type_without_a_rule_costs_no_rule_matching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings no rule names go through the listener without a single condition test or field dict,
    and open nothing; a reading the shipped rule does name still opens its work order."""
    calls = {"test": 0, "fields": 0}
    test, fields = rules_mod.Condition.test, rules_mod.event_fields

    def counting_test(self: Any, value: Any) -> bool:
        calls["test"] += 1
        return test(self, value)

    def counting_fields(*args: Any) -> dict[str, Any]:
        calls["fields"] += 1
        return fields(*args)

    async with database("sqlite", tmp_path) as db:
        svc = service(db, Clock())  # index built before counting: only the per-event work is counted
        monkeypatch.setattr(rules_mod.Condition, "test", counting_test)
        monkeypatch.setattr(rules_mod, "event_fields", counting_fields)
        unnamed = [make_event("sensor-1", "sensor.reading", i, {"power_w": 99_999}, ts=T0) for i in (1, 2)]
        await _ingest(db, svc, unnamed)
        assert calls == {"test": 0, "fields": 0}
        assert await svc.page() == type(await svc.page())(items=[], next_cursor=None)

        await _ingest(db, svc, [make_event("meter-1", "meter.reading", 3, {"power_w": 45_000}, ts=T0)])
        [wo] = (await svc.page()).items
        assert (wo.rule_id, wo.device_id, wo.priority) == ("power-over-limit", "meter-1", "urgent")


async def _ingest(db: Db, svc: Any, events: list[Event]) -> store.BatchOutcome:
    batch = make_batch(events, site="oak-garden", gateway="gw-1")
    async with db.sessions() as session, session.begin():
        outcome = await store.ingest_batch(session, batch, svc.clock())
    await svc.on_events(batch, outcome.new_events)
    return outcome


# ---- the SQLite store fast path ---------------------------------------------------------------------


def _raw(db: Db, sql: str) -> list[tuple[Any, ...]]:
    path = db.settings.database_url.split("///", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


@contextlib.asynccontextmanager
async def _two_databases(tmp_path: Path) -> AsyncIterator[tuple[Db, Db]]:
    async with database("sqlite", tmp_path) as a, database("sqlite", tmp_path) as b:
        yield a, b


def _mixed_events(t0: datetime) -> list[Event]:
    where = Location(building="3", unit="2", apartment="1202")
    return [
        make_event(
            "meter-1", "meter.reading", 1, {"kwh": 1000.5, "v": 229.8, "on": True}, ts=t0, location=where
        ),
        make_event(
            "meter-1", "meter.reading", 2, {"values": {"flow_m3h": 0.25}}, ts=t0 + timedelta(seconds=1)
        ),
        make_event(
            "gate-1", "gate.opened", 3, ts=t0 + timedelta(microseconds=7), location=Location(lane="in")
        ),
        make_event("gate-1", "gate.closed", 4, {"by": "auto"}, ts=t0.replace(microsecond=0)),
        make_event("fire-1", "fire.alarm", 5, {"zone": 3, "名": "大堂"}, ts=t0 - timedelta(days=1)),
        make_event("meter-2", "meter.reading", 6, {"kwh": 7}, ts=t0, location=where),
    ]


async def test_sqlite_rows_are_what_sqlalchemy_writes(tmp_path: Path) -> None:
    """Events, readings, the site and the gateway as the fast path stores them, against the same values
    written through SQLAlchemy's own types (the column text formats, JSON, booleans)."""
    now = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    batch = make_batch(_mixed_events(now - timedelta(minutes=5)), sent_at=now - timedelta(seconds=200))
    async with _two_databases(tmp_path) as (fast, reference):
        async with fast.sessions() as session, session.begin():
            outcome = await store.ingest_batch(session, batch, now)
        async with reference.sessions() as session, session.begin():
            skew = (batch.sent_at - now).total_seconds()
            await store.touch_gateway(
                session, batch.site_id, batch.gateway_id, now, clock_skew_s=round(skew, 3), clock_skewed=True
            )
            await session.execute(insert(EventRow), [_event_row(batch, e, now) for e in batch.events])
            ordered = sorted(batch.events, key=lambda e: (e.ts, e.seq))
            readings = [
                {"device_id": e.device_id, "point": p, "ts_ms": int(e.ts.timestamp() * 1000), "value": v}
                for e in ordered
                if e.type.startswith(("meter.reading", "sensor.reading"))
                for p, v in numeric_points(e.data).items()
            ]
            await session.execute(insert(Reading), readings)
        assert (outcome.stored, outcome.duplicates) == (6, 0)
        assert [e.seq for e in outcome.new_events] == [e.seq for e in ordered]
        for sql in (
            "SELECT id, site_id, gateway_id, seq, device_id, type, severity, ts, received_at, stored_at"
            " FROM events ORDER BY id",
            "SELECT * FROM readings ORDER BY device_id, point, ts_ms",
            "SELECT * FROM sites",
            "SELECT * FROM gateways",
        ):
            assert _raw(fast, sql) == _raw(reference, sql), sql
        # JSON columns hold the same values; the store writes compact JSON and NULL for no location, as
        # it did before these fast paths (SQLAlchemy would write spaced JSON and 'null').
        sql = "SELECT location, data FROM events ORDER BY id"
        assert [_json_values(r) for r in _raw(fast, sql)] == [_json_values(r) for r in _raw(reference, sql)]
        assert all(loc is None or " " not in loc for loc, _ in _raw(fast, sql))
        # Device state: the fold of merge_state over the events in (ts, seq) order.
        for device in {e.device_id for e in batch.events}:
            expected: dict[str, Any] = {}
            for e in ordered:
                if e.device_id == device:
                    expected = merge_state(expected, state_updates(e.type, e.data), e.ts)
            [(state, updated_at)] = _raw(fast, f"SELECT state, updated_at FROM devices WHERE id = '{device}'")
            assert (json.loads(state), updated_at) == (expected, "2026-03-01 08:00:00.123456")


def _json_values(row: tuple[Any, ...]) -> list[Any]:
    return [None if v is None else json.loads(v) for v in row]


def _event_row(batch: EventBatch, e: Event, now: datetime) -> dict[str, Any]:
    return {
        "id": e.id,
        "site_id": batch.site_id,
        "gateway_id": batch.gateway_id,
        "seq": e.seq,
        "device_id": e.device_id,
        "type": e.type,
        "severity": event_severity(e.type).value,
        "ts": e.ts,
        "received_at": e.received_at,
        "stored_at": now,
        "location": e.location.model_dump(exclude_none=True) if e.location else None,
        "data": e.data,
    }


async def test_touch_batch_gateway_writes_what_touch_gateway_writes(tmp_path: Path) -> None:
    first, later = datetime(2026, 3, 1, 8, 0, tzinfo=UTC), datetime(2026, 3, 1, 9, 0, 0, 5, tzinfo=UTC)
    async with _two_databases(tmp_path) as (fast, reference):
        for now, sent in (
            (first, first - timedelta(seconds=500)),
            (later, later + timedelta(seconds=1.2345)),
        ):
            batch = make_batch([make_event("gate-1", "gate.opened", 1)], sent_at=sent)
            skew = (sent - now).total_seconds()
            async with fast.sessions() as session, session.begin():
                await store.touch_batch_gateway(session, batch, now)
            async with reference.sessions() as session, session.begin():
                await store.touch_gateway(
                    session,
                    batch.site_id,
                    batch.gateway_id,
                    now,
                    clock_skew_s=round(skew, 3),
                    clock_skewed=abs(skew) > 120,
                )
            for sql in ("SELECT * FROM sites", "SELECT * FROM gateways"):
                assert _raw(fast, sql) == _raw(reference, sql), sql


async def test_redelivery_with_some_events_stored_ends_as_one_batch_would(tmp_path: Path) -> None:
    """The path for a batch some of whose events are stored already (computed from the new ones only)
    against the path where every event is new."""
    now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    events = _mixed_events(now - timedelta(minutes=5))
    async with _two_databases(tmp_path) as (split, whole):
        async with split.sessions() as session, session.begin():
            await store.ingest_batch(session, make_batch(events[:4]), now)
        async with split.sessions() as session, session.begin():
            again = await store.ingest_batch(session, make_batch(events[2:]), now)
        async with whole.sessions() as session, session.begin():
            await store.ingest_batch(session, make_batch(events), now)
        assert (again.stored, again.duplicates) == (2, 2)
        assert [e.seq for e in again.new_events] == [5, 6]  # (ts, seq) order: seq 5 is a day older
        for sql in (
            "SELECT id, site_id, gateway_id, seq, device_id, type, severity, ts, received_at, location, data"
            " FROM events ORDER BY id",
            "SELECT * FROM readings ORDER BY device_id, point, ts_ms",
            "SELECT id, state FROM devices ORDER BY id",
        ):
            assert _raw(split, sql) == _raw(whole, sql), sql


async def test_ingest_prepared_ahead_stores_the_same(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    batch = make_batch(_mixed_events(now))
    async with _two_databases(tmp_path) as (ahead, inline):
        async with ahead.sessions() as session, session.begin():
            a = await store.ingest_batch(session, batch, now, prepared=store.prepare_batch(batch))
        async with inline.sessions() as session, session.begin():
            b = await store.ingest_batch(session, batch, now)
        assert (a.stored, [e.id for e in a.new_events]) == (b.stored, [e.id for e in b.new_events])
        for sql in ("SELECT * FROM events ORDER BY id", "SELECT * FROM readings", "SELECT * FROM devices"):
            assert _raw(ahead, sql) == _raw(inline, sql), sql


async def test_driver_errors_are_sqlalchemy_errors(tmp_path: Path) -> None:
    """Ingest counts SQLAlchemy errors as store errors (not acknowledged, resent); the driver's own
    errors must still arrive as those."""
    async with database("sqlite", tmp_path) as db, db.sessions() as session, session.begin():
        await session.connection()
        await (await (await session.connection()).get_raw_connection()).driver_connection.execute(
            "DROP TABLE readings"
        )
        with pytest.raises(SQLAlchemyError, match="no such table: readings"):
            await store.ingest_batch(session, make_batch(_mixed_events(T0)), T0)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_group_ends_as_its_batches_stored_one_by_one(tmp_path: Path, kind: str) -> None:
    """Ingest's group commit (one transaction, and on SQLite one hand-off to aiosqlite's thread for all
    of its statements) against the same batches each in a transaction of its own: an id repeated within
    the group and one stored before are stored once, a device's later batch merges into the state its
    earlier one left, new devices get rows, each gateway keeps its latest batch's skew."""
    skip_without_pg(kind)
    now = datetime(2026, 3, 1, 8, 0, 0, 250, tzinfo=UTC)
    t0 = now - timedelta(minutes=5)
    events = _mixed_events(t0)
    stored_before = make_batch(events[:2])
    later = [
        make_event("gate-1", "gate.closed", 7, ts=t0 + timedelta(seconds=9)),
        make_event("meter-1", "meter.reading", 8, {"kwh": 1001}, ts=t0 + timedelta(seconds=9)),
        make_event("door-4", "door.opened", 9, ts=t0 - timedelta(seconds=1)),  # a device first heard of
    ]
    group = [
        make_batch(events[1:4], sent_at=now - timedelta(seconds=300)),  # events[1] stored before
        make_batch(events[3:], gateway="gw-2", sent_at=now),  # events[3] repeated within the group
        make_batch(later, sent_at=now - timedelta(seconds=2)),
    ]
    async with (
        database(kind, tmp_path) as grouped,
        database(kind, tmp_path) as threaded,
        database(kind, tmp_path) as single,
    ):
        outcomes = {}
        for db in (grouped, threaded, single):
            async with db.sessions() as session, session.begin():
                await store.ingest_batch(session, stored_before, now)
        prepared = [(b, store.prepare_batch(b, sqlite=kind == "sqlite")) for b in group]
        async with grouped.sessions() as session, session.begin():
            outcomes["grouped"] = await store.ingest_group(session, prepared, now)
        # Ingest's own path: the whole transaction on the writer thread (SQLite), a session elsewhere.
        async with cloud_db.writes_on_thread(threaded.sessions) as writer:
            if writer is None:
                async with threaded.sessions() as session, session.begin():
                    outcomes["threaded"] = await store.ingest_group(session, prepared, now)
            else:
                outcomes["threaded"] = await store.submit_group(writer, prepared, now).result()
        outcomes["single"] = []
        for b in group:
            async with single.sessions() as session, session.begin():
                outcomes["single"].append(await store.ingest_batch(session, b, now))
        a, b, c = (
            [(o.stored, o.duplicates, [e.id for e in o.new_events]) for o in outcomes[k]] for k in outcomes
        )
        assert a == b == c
        assert [(stored, dups) for stored, dups, _ in a] == [(2, 1), (2, 1), (3, 0)]
        for sql in (
            "SELECT id, site_id, gateway_id, seq, device_id, type, severity, ts, received_at, stored_at,"
            " location, data FROM events ORDER BY id",
            "SELECT * FROM readings ORDER BY device_id, point, ts_ms",
            "SELECT id, site_id, gateway_id, kind, model, location, state, online, updated_at FROM devices"
            " ORDER BY id",
            "SELECT id, site_id, online, last_seen, clock_skew_s, clock_skewed FROM gateways ORDER BY id",
            "SELECT id FROM sites",
        ):
            assert await _rows(grouped, sql) == await _rows(single, sql), sql
            assert await _rows(threaded, sql) == await _rows(single, sql), sql


@pytest.mark.parametrize("n", [1, 3, 4, 5, 31, 32, 33, 64, 65, 100])
def test_many_rows_to_a_statement_padded_to_a_few_sizes(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Rows go many to a statement, padded with NULL rows up to a power of two that the statement drops:
    every row once, no padding stored, an upsert clause still applies, and few statement texts."""
    monkeypatch.setattr(store, "_MAX_ROWS", 32)
    monkeypatch.setattr(store, "_MIN_ROWS", 4)
    inserts: list[str] = []

    class Recorded:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.getlimit = conn.getlimit
            self.conn = conn

        def execute(self, sql: str, params: list[Any]) -> sqlite3.Cursor:
            inserts.append(sql)
            return self.conn.execute(sql, params)

    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE r (a TEXT NOT NULL, b INTEGER, c REAL, PRIMARY KEY (a, b))")
        rows = [(f"d{i % 7}", i, i / 2) for i in range(n)]
        db = store._Statements(Recorded(conn))  # type: ignore[arg-type]
        db.insert("INSERT INTO r (a, b, c)", 3, rows)
        db.insert("INSERT INTO r (a, b, c)", 3, rows[: n // 2 + 1], " ON CONFLICT (a, b) DO NOTHING")
        assert conn.execute("SELECT a, b, c FROM r ORDER BY b").fetchall() == rows
    assert {sql.count("(?, ?, ?)") for sql in inserts} <= {4, 8, 16, 32}
    assert len(inserts) == (n + 31) // 32 + (n // 2 + 32) // 32


async def _rows(db: Db, sql: str) -> list[tuple[Any, ...]]:
    async with db.sessions() as session:
        return [tuple(r) for r in (await session.execute(text(sql))).all()]


async def test_readings_of_any_point_name_and_value_are_stored_as_given(tmp_path: Path) -> None:
    """Readings reach SQLite as one JSON text: names that need escaping, big and small numbers, and
    the infinities (which SQLite's JSON cannot hold, so their rows go one by one) store as bound."""
    now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    odd = {'a"b\\c': 1.5, "\u0001名": -2, "big": 2**53 + 1, "tiny": 5e-324, "e": 1e300}
    batches = [
        make_batch([make_event("meter-1", "meter.reading", 1, odd, ts=now)]),
        make_batch([make_event("meter-2", "meter.reading", 2, {"up": math.inf, "down": -math.inf}, ts=now)]),
    ]
    async with _two_databases(tmp_path) as (fast, reference):
        for batch in batches:
            async with fast.sessions() as session, session.begin():
                await store.ingest_batch(session, batch, now)
            async with reference.sessions() as session, session.begin():
                await store.touch_batch_gateway(session, batch, now)
                [e] = batch.events
                ts_ms = int(e.ts.timestamp() * 1000)
                rows = [
                    {"device_id": e.device_id, "point": p, "ts_ms": ts_ms, "value": v}
                    for p, v in numeric_points(e.data).items()
                ]
                await session.execute(insert(Reading), rows)
        sql = "SELECT device_id, point, ts_ms, value, typeof(value) FROM readings ORDER BY device_id, point"
        assert _raw(fast, sql) == _raw(reference, sql)
        assert len(_raw(fast, sql)) == 7


async def test_new_device_row_is_what_the_orm_insert_writes(tmp_path: Path) -> None:
    """SQLite inserts a device first heard of in its events with raw SQL; PostgreSQL (and this path
    before) with SQLAlchemy's insert: the same row."""
    now = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    batch = make_batch([make_event("door-4", "door.unlocked", 1, ts=now)])
    async with _two_databases(tmp_path) as (fast, reference):
        async with fast.sessions() as session, session.begin():
            await store.ingest_batch(session, batch, now)
        async with reference.sessions() as session, session.begin():
            await store.touch_batch_gateway(session, batch, now)
            await store._apply_to_devices_pg(session, batch, [], now, latest={}, readings=[])
            row = {"id": "door-4", "site_id": batch.site_id, "gateway_id": batch.gateway_id}
            await session.execute(
                insert(Device).values(**row, kind="unknown", model="", state={}, online=True, updated_at=now)
            )
        sql = "SELECT id, site_id, gateway_id, kind, model, location, online, updated_at FROM devices"
        assert _raw(fast, sql) == _raw(reference, sql)
        [(state,)] = _raw(reference, "SELECT state FROM devices")
        assert json.loads(state) == {}


async def test_a_group_takes_one_hand_off_to_sqlite_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of a group commit, however many batches, devices and gateways, goes to aiosqlite's
    thread in one hand-off: each costs the drain a wake-up of that thread and of the event loop."""
    batches = [make_batch(_mixed_events(T0)), make_batch(_mixed_events(T0), gateway="gw-2")]
    async with database("sqlite", tmp_path) as db, db.sessions() as session, session.begin():
        await session.connection()  # BEGIN: the session's own hand-offs, not the group's
        calls = []
        run = aiosqlite.Connection._execute

        async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kw: Any) -> Any:
            calls.append(fn)
            return await run(self, fn, *args, **kw)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
        outcomes = await store.ingest_group(session, [(b, None) for b in batches], T0)
        assert [o.stored for o in outcomes] == [6, 6]
        assert calls == [store._store_group_sqlite]


async def test_aiosqlite_private_api_the_store_relies_on(tmp_path: Path) -> None:
    """cloud/store.py on_sqlite_thread uses aiosqlite's private ``Connection._execute`` and ``_conn``. If
    an aiosqlite upgrade renames or changes them, this says so here rather than as a drain that fails
    every batch."""
    assert callable(getattr(aiosqlite.Connection, "_execute", None)), "aiosqlite.Connection._execute is gone"
    assert isinstance(getattr(aiosqlite.Connection, "_conn", None), property), "aiosqlite.Connection._conn"
    async with aiosqlite.connect(tmp_path / "t.db") as conn:

        def where(raw: sqlite3.Connection, x: int) -> tuple[int, int, bool]:
            return threading.get_ident(), raw.execute("SELECT ?", (x,)).fetchone()[0], raw is conn._conn

        thread, value, same = await store.on_sqlite_thread(conn, where, 41)
        assert (value, same) == (41, True)
        assert thread != threading.get_ident()  # aiosqlite's own thread, not the event loop's


# ---- the running cloud over a real broker -------------------------------------------------------------


async def test_running_cloud_opens_work_order_for_reading_above_limit(tmp_path: Path) -> None:
    async with embedded_broker() as port:
        settings = cloud_settings(port, f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
        async with running_cloud(settings) as cloud, FakeGateway(port) as gw:
            normal = [make_event(f"meter-{i}", "meter.reading", i, {"power_w": 900.0}) for i in range(1, 40)]
            over = make_event("meter-7", "meter.reading", 40, {"power_w": 31_000, "kwh": 5})
            other = make_event("sensor-1", "sensor.reading", 41, {"power_w": 99_999})
            batch = make_batch([*normal, over, other])
            await gw.send_batch(batch)
            ack = await gw.next_ack()
            assert (ack.batch_id, ack.stored, ack.duplicates) == (batch.batch_id, 41, 0)

            async def opened() -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = (await cloud.http.get("/api/v1/work-orders")).json()["items"]
                # The maintenance plan's schedules open work orders of their own when due on the
                # day the test runs: only the rules' are this test's.
                return [i for i in items if i["rule_id"] is not None]

            [wo] = await eventually(opened)
            assert (wo["rule_id"], wo["device_id"], wo["data"]["power_w"]) == (
                "power-over-limit",
                "meter-7",
                31000,
            )
            readings = (await cloud.http.get("/api/v1/devices/meter-7")).json()["state"]["reading"]["value"]
            assert readings == {"power_w": 31000, "kwh": 5}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.datetimes(timezones=st.just(UTC)), min_size=1, max_size=20))
def test_a_batchs_utc_times_are_stored_as_sqlalchemy_would_store_them(times: list[datetime]) -> None:
    """prepare_batch formats UTC times onto the text of their minute, cached per batch: the same text as
    SQLAlchemy's DATETIME on SQLite, whole seconds (".000000") and years before 1000 included."""
    minutes: dict[tuple[int, ...], str] = {}
    for t in times + [t.replace(microsecond=0) for t in times]:
        assert store._utc_text(t, minutes) == store._sqlite_ts(t)
