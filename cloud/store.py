"""Store operations shared by ingest, commands and the API. Each function works inside the caller's
session and transaction; the caller commits. One code path for SQLite and PostgreSQL: both take
``INSERT ... ON CONFLICT`` through their SQLAlchemy dialect.

Commands have their own module, :mod:`cloud.command_store`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Any, cast

import structlog
from pydantic_core import to_json
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import db
from cloud.state import merge_latest, numeric_points, state_updates
from cloud.tables import Device, Gateway, RejectedEvent, Site
from protocol.models import (
    Event,
    EventBatch,
    GatewayStatus,
    Location,
    event_severity,
)

_READING_TYPES = ("meter.reading", "sensor.reading")
log = structlog.get_logger("steward.cloud.store")
# (device id, the site that claimed it) already logged: a gateway repeats its claim in every status and
# batch, and the log should say so once per process, not per message.
_CLAIMS_LOGGED: set[tuple[str, str]] = set()


def device_id_clashes() -> int:
    """How many (device id, claiming site) clashes this process has seen (``/metrics``)."""
    return len(_CLAIMS_LOGGED)


def _foreign_claim(device_id: str, owner_site: str, site_id: str, gateway_id: str) -> None:
    """A site's gateway named a device id that another site's registry holds: device ids are unique
    across the estate portfolio (as gateway ids are), and one site must never move, or write the state
    or readings of, another site's device. Its events are still stored, under its own site."""
    if (device_id, site_id) in _CLAIMS_LOGGED:
        return
    _CLAIMS_LOGGED.add((device_id, site_id))
    log.error(
        "registry.device_id_taken",
        device=device_id,
        owner_site=owner_site,
        site=site_id,
        gateway=gateway_id,
        hint=f"rename the device in site {site_id}'s config: device ids must be unique across sites",
    )


async def foreign_devices(session: AsyncSession, site_id: str, device_ids: Iterable[str]) -> dict[str, str]:
    """Of ``device_ids``, those another site's registry already holds, with that site, in id order."""
    wanted = sorted(set(device_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(Device.id, Device.site_id)
        .where(Device.id.in_(wanted), Device.site_id != site_id)
        .order_by(Device.id)
    )
    return {device_id: owner for device_id, owner in rows.all()}


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "sessions are bound to the app's engine"
    return bind.dialect.name


def _insert(session: AsyncSession, table: Any) -> Any:
    return (postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert)(table)


@dataclass(slots=True)
class BatchOutcome:
    stored: int
    duplicates: int
    new_events: list[Event] = field(default_factory=list)
    clock_skew_s: float = 0.0


async def touch_gateway(
    session: AsyncSession, site_id: str, gateway_id: str, now: datetime, **values: Any
) -> None:
    """Record that a gateway spoke: create its site and row if new, mark it online, bump last_seen."""
    await session.execute(
        _insert(session, Site)
        .values(id=site_id, name=None, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = {"online": True, "last_seen": now, **values}
    await session.execute(
        _insert(session, Gateway)
        .values(id=gateway_id, site_id=site_id, **{"status": {}, "health": {}, "clock_skewed": False, **row})
        .on_conflict_do_update(index_elements=["id"], set_={"site_id": site_id, **row})
    )


async def ingest_batch(
    session: AsyncSession,
    batch: EventBatch,
    now: datetime,
    max_skew_s: float = 120.0,
    *,
    touch: bool = True,
    prepared: PreparedBatch | None = None,
) -> BatchOutcome:
    """Insert every event once (insert-or-ignore on the ULID) and apply the new ones to device state.

    :func:`ingest_group` of one batch. ``touch=False``: the caller already ran
    :func:`touch_batch_gateway` in this transaction for a batch of the same gateway. ``prepared``:
    :func:`prepare_batch` of this batch, if the caller made it already; else it is made here.
    """
    [outcome] = await ingest_group(session, [(batch, prepared)], now, max_skew_s, touch=touch)
    return outcome


async def keep_rejected(
    session: AsyncSession,
    rejected: Sequence[tuple[str, str]],
    *,
    site_id: str,
    gateway_id: str,
    batch_id: str,
    now: datetime,
) -> None:
    """Keep ``rejected`` events, (JSON as received, why), of an acknowledged batch; one a resend brings
    again is kept once."""
    rows = [
        {
            "key": hashlib.sha256(f"{gateway_id}\n{payload}".encode()).hexdigest(),
            "site_id": site_id,
            "gateway_id": gateway_id,
            "batch_id": batch_id,
            "error": error,
            "payload": payload,
            "received_at": now,
        }
        for payload, error in rejected
    ]
    await session.execute(_insert(session, RejectedEvent).on_conflict_do_nothing(), rows)


async def ingest_group(
    session: AsyncSession,
    batches: Sequence[tuple[EventBatch, PreparedBatch | None]],
    now: datetime,
    max_skew_s: float = 120.0,
    *,
    touch: bool = True,
) -> list[BatchOutcome]:
    """Store several batches in the session's transaction, in order, as :func:`ingest_batch` would one
    after the other: the hot path of a backlog drain (ingest's group commit).

    ``touch``: first upsert each gateway once, with the clock skew of its latest batch, before any
    batch's devices (which reference it). Each batch comes with its :func:`prepare_batch`, or None to
    have it made here.

    Rows go to the driver as plain tuples (no per-row SQLAlchemy compilation or type processing). On
    SQLite the ids already stored are read first — safe because every SQLite transaction here holds the
    write lock from ``BEGIN IMMEDIATE`` (cloud/db.py) — and only the new rows are inserted; the whole
    group's statements run in one hand-off to aiosqlite's thread (:func:`_store_group_sqlite`). On
    PostgreSQL one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING id`` per batch
    answers which rows were new even with several cloud instances inserting concurrently.
    """
    if _dialect(session) == "postgresql":
        return await _ingest_group_pg(session, batches, now, max_skew_s, touch=touch)
    work, touches = _sqlite_group(batches, now, max_skew_s, touch=touch)
    driver = await _SqliteDriver.of(session)
    inserted = await driver.run(_store_group_sqlite, touches, work, _sqlite_ts(now))
    return _sqlite_outcomes(work, inserted, now)


@dataclass(slots=True)
class SubmittedGroup:
    """A group commit handed to a SQLite file's writer thread (:func:`submit_group`)."""

    work: list[tuple[EventBatch, PreparedBatch]]
    now: datetime
    job: asyncio.Future[list[list[str] | None]]  # per batch, the ids it inserted (None: all)

    async def result(self) -> list[BatchOutcome]:
        """Each batch's outcome once the transaction has ended, as :func:`ingest_group` gives them (or
        its error)."""
        return _sqlite_outcomes(self.work, await self.job, self.now)


def submit_group(
    writer: db.ThreadWriter,
    batches: Sequence[tuple[EventBatch, PreparedBatch | None]],
    now: datetime,
    max_skew_s: float = 120.0,
) -> SubmittedGroup:
    """:func:`ingest_group` of ``batches`` as a transaction of its own, BEGIN IMMEDIATE to COMMIT, run at
    once on the database's writer thread.

    Through a session each step (BEGIN, the group's statements, COMMIT, the pool's reset) was a hand-off
    to aiosqlite's thread and back, and each return waited for the event loop, busy parsing the next
    batches: a backlog's group commits spent more time waiting there than in SQLite. A group handed over
    while another still commits starts the moment that one ends."""
    work, touches = _sqlite_group(batches, now, max_skew_s, touch=True)
    job = writer.submit(_store_group_on, touches, work, _sqlite_ts(now))
    return SubmittedGroup(work, now, job)


def _store_group_on(
    conn: Connection,
    touches: list[tuple[str, str, float, int]],
    batches: list[tuple[EventBatch, PreparedBatch]],
    stamp: str,
) -> list[list[str] | None]:
    """:func:`_store_group_sqlite` in ``conn``'s transaction (a synchronous SQLite connection)."""
    # The writer thread's engine is pysqlite's: its DBAPI connection is the sqlite3 one, and is there
    # while the transaction is open (SQLAlchemy types it as any driver's, or None once closed).
    dbapi = cast(sqlite3.Connection, conn.connection.dbapi_connection)
    try:
        return _store_group_sqlite(dbapi, touches, batches, stamp)
    except _StatementError as exc:
        raise exc.as_dbapi_error() from exc.error


def _sqlite_group(
    batches: Sequence[tuple[EventBatch, PreparedBatch | None]],
    now: datetime,
    max_skew_s: float,
    *,
    touch: bool,
) -> tuple[list[tuple[EventBatch, PreparedBatch]], list[tuple[str, str, float, int]]]:
    """What :func:`_store_group_sqlite` takes: each batch with its SQLite rows, and the gateway upserts."""
    work = [(b, p if p is not None and p.sqlite else prepare_batch(b)) for b, p in batches]
    touches = (
        [_touch_row(b, max_skew_s, now) for b in _latest_per_gateway(b for b, _ in work)] if touch else []
    )
    return work, touches


def _sqlite_outcomes(
    work: list[tuple[EventBatch, PreparedBatch]], inserted: list[list[str] | None], now: datetime
) -> list[BatchOutcome]:
    outcomes = []
    for (batch, prepared), new_ids in zip(work, inserted, strict=True):
        by_id = prepared.by_id
        if new_ids is None:  # the usual case: nothing was stored before
            new_events = [by_id[i] for i in prepared.order]
        else:
            new_set = set(new_ids)
            new_events = [by_id[i] for i in prepared.order if i in new_set]
        outcomes.append(_outcome(batch, new_events, now))
    return outcomes


def _outcome(batch: EventBatch, new_events: list[Event], now: datetime) -> BatchOutcome:
    return BatchOutcome(
        stored=len(new_events),
        duplicates=len(batch.events) - len(new_events),
        new_events=new_events,
        clock_skew_s=(batch.sent_at - now).total_seconds(),
    )


def _latest_per_gateway(batches: Iterable[EventBatch]) -> Iterable[EventBatch]:
    """Each gateway's last batch, in the order the gateways first appear."""
    return {(b.site_id, b.gateway_id): b for b in batches}.values()


async def _ingest_group_pg(
    session: AsyncSession,
    batches: Sequence[tuple[EventBatch, PreparedBatch | None]],
    now: datetime,
    max_skew_s: float,
    *,
    touch: bool,
) -> list[BatchOutcome]:
    if touch:
        for batch in _latest_per_gateway(b for b, _ in batches):
            await touch_batch_gateway(session, batch, now, max_skew_s)
    outcomes = []
    for batch, given in batches:
        prepared = given or prepare_batch(batch, sqlite=False)  # SQLite's rows too are no harm
        by_id = prepared.by_id
        inserted = await _insert_events_pg(session, batch, list(by_id.values()), now)
        if len(inserted) == len(by_id):  # the usual case: nothing was stored before
            new_events = [by_id[i] for i in prepared.order]
            latest, readings = prepared.latest, prepared.readings
        else:
            new_ids = set(inserted)
            new_events = [by_id[i] for i in prepared.order if i in new_ids]
            latest, readings = _device_changes(new_events)
        await _apply_to_devices_pg(session, batch, new_events, now, latest=latest, readings=readings)
        outcomes.append(_outcome(batch, new_events, now))
    return outcomes


@dataclass(slots=True)
class PreparedBatch:
    """What storing a batch needs that no database state decides, worked out ahead: ingest does it in
    its parse stage, where it overlaps the previous group's SQL instead of adding to it."""

    sqlite: bool
    by_id: dict[str, Event]  # one event per id; a repeated id keeps its last event
    order: list[str]  # ids in (ts, seq) order: the order events are applied and reported in
    rows: dict[str, tuple[Any, ...]]  # SQLite: each event's row, all columns but stored_at (last)
    latest: dict[str, dict[str, tuple[Any, datetime]]]  # _device_changes of every event
    readings: list[tuple[str, str, int, float]]
    devices: list[str]  # every event's device, once each, sorted


def prepare_batch(batch: EventBatch, *, sqlite: bool = True) -> PreparedBatch:
    """:class:`PreparedBatch` for ``batch``; ``sqlite``: build SQLite's rows too.

    One pass over the events, in (ts, seq) order, builds SQLite's rows, the device changes and the
    readings (what :func:`_device_changes` gives): this runs for every event a backlog drains, on the
    thread every other stage of ingest needs too."""
    by_id = {e.id: e for e in batch.events}
    ordered = sorted(by_id.values(), key=_event_order)
    site, gateway = batch.site_id, batch.gateway_id
    rows: dict[str, tuple[Any, ...]] = {}
    latest: dict[str, dict[str, tuple[Any, datetime]]] = {}
    readings: list[tuple[str, str, int, float]] = []
    locations: dict[tuple[Any, ...], str] = {}
    times: dict[datetime, str] = {}
    minutes: dict[tuple[int, ...], str] = {}
    severities, kinds, to_json_, utc = _SEVERITY, _KINDS, _json, UTC
    for e in ordered:
        event_type, data, device_id, ts = e.type, e.data, e.device_id, e.ts
        per_device = latest.get(device_id)
        if per_device is None:
            per_device = latest[device_id] = {}
        if (kinds.get(event_type) or _kind(event_type)) == _READING:
            # What state_updates says of every reading, and its numeric points as readings rows.
            per_device["reading"] = (data, ts)
            points = numeric_points(data)
            if points:
                ts_ms = int(ts.timestamp() * 1000)
                readings += [(device_id, p, ts_ms, v) for p, v in points.items()]
        else:
            for key, value in state_updates(event_type, data).items():
                per_device[key] = (value, ts)
        if not sqlite:
            continue
        ts_text = times.get(ts)
        if ts_text is None:
            ts_text = times[ts] = _sqlite_ts(ts) if ts.tzinfo is not utc else _utc_text(ts, minutes)
        received_at = e.received_at
        received_text = times.get(received_at)
        if received_text is None:
            received_text = times[received_at] = (
                _sqlite_ts(received_at) if received_at.tzinfo is not utc else _utc_text(received_at, minutes)
            )
        location = e.location
        rows[e.id] = (
            e.id,
            site,
            gateway,
            e.seq,
            device_id,
            event_type,
            severities.get(event_type) or _severity(event_type),
            ts_text,
            received_text,
            None if location is None else _location_json(location, locations),
            to_json_(data),
        )
    return PreparedBatch(
        sqlite=sqlite,
        by_id=by_id,
        order=[e.id for e in ordered],
        rows=rows,
        latest={d: changes for d, changes in latest.items() if changes},
        readings=readings,
        devices=sorted(latest),
    )


_READING, _OTHER = 1, 2
_KINDS: dict[str, int] = {}  # event type -> _READING or _OTHER


def _kind(event_type: str) -> int:
    kind = _KINDS.get(event_type)
    if kind is None:
        kind = _KINDS[event_type] = _READING if event_type.startswith(_READING_TYPES) else _OTHER
        if len(_KINDS) > 10_000:  # event types are a small vocabulary; bound it anyway
            _KINDS.clear()
    return kind


def _utc_text(value: datetime, minutes: dict[tuple[int, ...], str]) -> str:
    """:func:`_sqlite_ts` of a time whose tzinfo is ``datetime.UTC``, as every validated time's is.

    ``minutes``: the texts of the minutes already seen (a batch's events mostly share a few): the
    seconds are formatted onto them, at 2/3 of the cost of ``isoformat`` (3 µs a time here, two per
    event)."""
    key = (value.year, value.month, value.day, value.hour, value.minute)
    head = minutes.get(key)
    if head is None:
        head = minutes[key] = value.isoformat(" ")[:17]
    return f"{head}{value.second:02d}.{value.microsecond:06d}"


async def touch_batch_gateway(
    session: AsyncSession, batch: EventBatch, now: datetime, max_skew_s: float = 120.0
) -> None:
    """:func:`touch_gateway` for the gateway that sent ``batch``, with the clock skew the batch shows."""
    if _dialect(session) == "postgresql":
        gateway_id, site_id, skew, skewed = _touch_row(batch, max_skew_s, now)
        await touch_gateway(session, site_id, gateway_id, now, clock_skew_s=skew, clock_skewed=bool(skewed))
        return
    db = await _SqliteDriver.of(session)
    await db.run(_store_group_sqlite, [_touch_row(batch, max_skew_s, now)], [], _sqlite_ts(now))


def _touch_row(batch: EventBatch, max_skew_s: float, now: datetime) -> tuple[str, str, float, int]:
    """What :data:`_SQLITE_TOUCH_GATEWAY` binds besides the time: (gateway, site, skew, skewed)."""
    skew = (batch.sent_at - now).total_seconds()
    return batch.gateway_id, batch.site_id, round(skew, 3), int(abs(skew) > max_skew_s)


# The same two upserts as touch_gateway, as SQLAlchemy would bind them on SQLite (booleans 1/0, JSON
# text, naive UTC text), without building and compiling two ORM statements per group commit.
_SQLITE_TOUCH_SITE = (
    "INSERT INTO sites (id, name, created_at, updated_at) VALUES (?, NULL, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_SQLITE_TOUCH_GATEWAY = (
    "INSERT INTO gateways (id, site_id, online, last_seen, status, health, clock_skew_s, clock_skewed)"
    " VALUES (?, ?, 1, ?, '{}', '{}', ?, ?) ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id,"
    " online = 1, last_seen = excluded.last_seen, clock_skew_s = excluded.clock_skew_s,"
    " clock_skewed = excluded.clock_skewed"
)


_event_order = attrgetter("ts", "seq")  # (ts, seq), without a Python call per event


_SEVERITY: dict[str, str] = {}


def _severity(event_type: str) -> str:
    sev = _SEVERITY.get(event_type)
    if sev is None:
        sev = _SEVERITY[event_type] = event_severity(event_type).value
        if len(_SEVERITY) > 10_000:  # event types are a small vocabulary; bound it anyway
            _SEVERITY.clear()
    return sev


def _json(value: Any) -> str:
    """Compact JSON through pydantic-core (several times faster than ``json.dumps``)."""
    return to_json(value).decode()


def _location_json(location: Location | None, cache: dict[tuple[Any, ...], str]) -> str | None:
    """The stored JSON of an event location (``exclude_none``), memoised per batch: most events of a
    batch share a handful of locations. Keyed by the field values: hashing and comparing the models
    themselves runs pydantic's Python ``__hash__``/``__eq__`` for every event."""
    if location is None:
        return None
    key = tuple(location.__dict__.values())
    text_ = cache.get(key)
    if text_ is None:
        text_ = cache[key] = _json(location.model_dump(exclude_none=True))
    return text_


def _sqlite_ts(value: datetime) -> str:
    """What SQLAlchemy's SQLite DATETIME stores for :class:`cloud.tables.UTCDateTime`: naive UTC
    text, always with microseconds (``2026-03-01 08:00:00.000000``)."""
    offset = value.utcoffset()
    # By offset, not by tzinfo identity: a UTC time with another tzinfo object needs no conversion.
    if offset is None or offset:
        value = value.astimezone(UTC)
    text_ = value.isoformat(" ")  # "YYYY-MM-DD HH:MM:SS[.ffffff]+00:00"
    return text_[:26] if value.microsecond else f"{text_[:19]}.000000"


class _SqliteDriver:
    """The aiosqlite connection under a session's transaction, for the statements of a backlog drain.

    Through SQLAlchemy's adapter each statement costs several hand-offs to aiosqlite's thread (cursor,
    execute, fetch, close) and about 250 µs of the event loop's CPU. Here a whole group's statements
    run as one function on that thread (:meth:`run`): each hand-off costs a wake-up of the thread and
    one of the event loop, each waiting for the interpreter lock, about 185 µs of wall time in the
    drain. Same connection and transaction (``BEGIN IMMEDIATE`` already issued by the session), so
    atomicity and the write lock are unchanged. Driver errors are raised as SQLAlchemy's, as they were
    before: ingest counts those as store errors and does not acknowledge the batch."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def of(cls, session: AsyncSession) -> _SqliteDriver:
        connection = await session.connection()  # begins the transaction if it has not yet
        raw = await connection.get_raw_connection()
        return cls(raw.driver_connection)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(sqlite3_connection, *args)`` on the connection's own thread, in one hand-off; ``fn``
        sends its statements through :class:`_Statements`."""
        try:
            return await on_sqlite_thread(self.conn, fn, *args)
        except _StatementError as exc:
            raise exc.as_dbapi_error() from exc.error


def on_sqlite_thread(conn: Any, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Run ``fn(sqlite3_connection, *args)`` on the thread of the aiosqlite connection ``conn``.

    aiosqlite's public calls hand one statement (or one fetch, or one cursor close) at a time to its
    thread; a drain's group commit issues tens of them. ``Connection._execute`` (queue a callable, await
    its result) and ``Connection._conn`` (the sqlite3 connection, raising once closed) are private
    aiosqlite API, used in this one place only (tests/test_ingest_fastpath.py fails clearly if a new
    aiosqlite renames them). The callable runs on the same thread and connection as every other
    statement, so sqlite3's thread check and the order of statements are unchanged."""
    return conn._execute(fn, conn._conn, *args)  # type: ignore[no-any-return]


class _StatementError(Exception):
    """A sqlite3 error with the statement that raised it, out of :func:`on_sqlite_thread`."""

    def __init__(self, sql: str, error: sqlite3.Error) -> None:
        super().__init__(sql)
        self.sql, self.error = sql, error

    def as_dbapi_error(self) -> DBAPIError:
        """As SQLAlchemy raises driver errors: ingest counts those as store errors and does not ack."""
        # A sqlite3.Error is an instance of the DBAPI's base error given, so this is a DBAPIError (the
        # subclass for it, OperationalError and so on); the overload for an Exception says StatementError.
        return cast(
            DBAPIError, DBAPIError.instance(self.sql, None, self.error, sqlite3.Error, hide_parameters=True)
        )


class _Statements:
    """Statements on the sqlite3 connection, on aiosqlite's thread, each error tagged with its SQL."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        try:
            self.conn.execute(sql, params).close()
        except sqlite3.Error as exc:
            raise _StatementError(sql, exc) from exc

    def fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            cursor = self.conn.execute(sql, params)
            try:
                return cursor.fetchall()
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise _StatementError(sql, exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows).close()
        except sqlite3.Error as exc:
            raise _StatementError(sql, exc) from exc

    def insert(self, head: str, width: int, rows: list[tuple[Any, ...]], end: str = "") -> None:
        """``head`` (``INSERT INTO table (columns)``) of ``rows`` (``width`` values each, the first never
        NULL) + ``end``, in as few statements as the variable limit allows, instead of ``executemany``.

        sqlite3 gives the interpreter lock back around each step, and getting it back while another
        thread holds it (the parse of the next batches) waits up to a switch interval: with a step per
        row that starved SQLite of its own thread, and even a statement per 1,024 rows made a group
        commit wait more than it worked. So one statement takes up to ``_MAX_ROWS`` rows. Its rows come
        from a ``VALUES`` list padded with rows of NULLs up to a power of two (at least ``_MIN_ROWS``)
        that a ``WHERE`` drops: compiling a statement of thousands of rows costs ten times running it,
        and a few sizes keep every text in sqlite3's statement cache."""
        limit = min(_MAX_ROWS, self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        most = 1 << (limit.bit_length() - 1)
        for start in range(0, len(rows), most):
            chunk = rows[start : start + most]
            size = max(_MIN_ROWS, 1 << (len(chunk) - 1).bit_length())
            sql = _values_sql(head, width, size, end)
            params = list(chain.from_iterable(chunk))
            params += [None] * ((size - len(chunk)) * width)
            try:
                self.conn.execute(sql, params).close()
            except sqlite3.Error as exc:
                raise _StatementError(sql, exc) from exc


_MAX_ROWS = 4096
_MIN_ROWS = 16


@lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int, end: str) -> str:
    one = f"({', '.join('?' * width)})"
    # The WHERE drops the padding, and lets an upsert clause follow (SQLite's grammar needs one there).
    return f"{head} SELECT * FROM (VALUES {', '.join([one] * rows)}) WHERE column1 IS NOT NULL{end}"


_SQLITE_EXISTING = "SELECT id FROM events WHERE id IN (SELECT value FROM json_each(?))"
_SQLITE_INSERT = (
    "INSERT INTO events (id, site_id, gateway_id, seq, device_id, type, severity, ts, received_at,"
    " location, data, stored_at)"
)


def _store_group_sqlite(
    conn: sqlite3.Connection,
    touches: list[tuple[str, str, float, int]],
    batches: list[tuple[EventBatch, PreparedBatch]],
    stamp: str,
) -> list[list[str] | None]:
    """On aiosqlite's thread, in the session's transaction: upsert each gateway of ``touches``
    (:func:`_touch_row`), then store ``batches`` in order, ``stamp`` being the time as stored. Answers,
    per batch, the ids it inserted (None: all of them).

    The whole group at once: one look-up of the ids already stored, the new rows inserted many to a
    statement, one read of the devices' states, one update of those that changed, the readings many
    to a statement. That ends as the batches stored one after the other would: an id is new in the first
    batch that holds it only, and each batch's device changes are merged into the state the batches
    before it left (kept here, as nothing else writes in this transaction)."""
    db = _Statements(conn)
    for gateway_id, site_id, skew, skewed in touches:
        db.execute(_SQLITE_TOUCH_SITE, (site_id, stamp, stamp))
        db.execute(_SQLITE_TOUCH_GATEWAY, (gateway_id, site_id, stamp, skew, skewed))
    if not batches:
        return []
    ids = [i for _, prepared in batches for i in prepared.by_id]
    seen = {row[0] for row in db.fetchall(_SQLITE_EXISTING, (_json(ids),))}
    rows: list[tuple[Any, ...]] = []
    stored_at = (stamp,)
    inserted: list[list[str] | None] = []
    changes = []  # per batch with new events: (batch, its devices, latest, readings)
    for batch, prepared in batches:
        by_id = prepared.by_id
        if seen.isdisjoint(by_id):  # the usual case: nothing was stored before
            rows += [r + stored_at for r in prepared.rows.values()]
            seen.update(by_id)
            inserted.append(None)
            changes.append((batch, prepared.devices, prepared.latest, prepared.readings))
            continue
        new_ids = [i for i in by_id if i not in seen]
        seen.update(new_ids)
        inserted.append(new_ids)
        if new_ids:
            rows += [prepared.rows[i] + stored_at for i in new_ids]
            new_set = set(new_ids)
            new_events = [by_id[i] for i in prepared.order if i in new_set]
            latest, readings = _device_changes(new_events)
            changes.append((batch, sorted({e.device_id for e in new_events}), latest, readings))
    if rows:
        db.insert(_SQLITE_INSERT, 12, rows)
    if changes:
        _apply_to_devices_sqlite(db, changes, stamp)
    return inserted


def _apply_to_devices_sqlite(
    db: _Statements,
    changes: list[tuple[EventBatch, list[str], dict[str, dict[str, tuple[Any, datetime]]], list[Any]]],
    stamp: str,
) -> None:
    """For each batch in order, its devices' changes (:func:`_device_changes` of its new events) merged
    into their states; a device no event named before gets a row. Then one update of every device whose
    state changed and one insert of every reading. A device of another site keeps its state and
    readings (:func:`_foreign_claim`)."""
    states: dict[str, dict[str, Any]] = {}  # device -> its state in this transaction
    sites: dict[str, str] = {}  # device -> the site it belongs to

    def read_states(device_ids: list[str]) -> None:
        # One row, [[id, state text, site], ...]: a row per device would be a step per device. What the
        # JSON column type would give: json.loads of the stored text, {} for NULL or null.
        [(found,)] = db.fetchall(_DEVICE_STATES_SQLITE, (_json(device_ids),))
        for i, state, site in json.loads(found):
            states[i] = (json.loads(state) if state is not None else None) or {}
            sites[i] = site

    read_states(sorted({d for _, devices, _, _ in changes for d in devices}))
    changed: dict[str, dict[str, Any]] = {}
    readings: list[Any] = []
    for batch, devices, latest, batch_readings in changes:
        missing = [d for d in devices if d not in states]
        if missing:
            db.executemany(
                _DEVICE_INSERT_SQLITE, [(d, batch.site_id, batch.gateway_id, stamp) for d in missing]
            )
            read_states(missing)
        foreign = {d for d in devices if sites[d] != batch.site_id}
        for device_id in foreign:
            _foreign_claim(device_id, sites[device_id], batch.site_id, batch.gateway_id)
        for device_id, updates in latest.items():
            if device_id in foreign:
                continue
            before = states[device_id]
            state = merge_latest(before, updates)
            if state != before:
                states[device_id] = changed[device_id] = state
        readings += [r for r in batch_readings if r[0] not in foreign] if foreign else batch_readings
    if changed:
        update = [(d, json.dumps(s)) for d, s in changed.items()]
        db.execute(_DEVICE_STATE_SQLITE, (_json(update), stamp))
    if readings:
        db.insert(_READINGS_INSERT_SQLITE, 4, readings, _READINGS_CONFLICT)


_PG_INSERT = text(
    "INSERT INTO events (id, site_id, gateway_id, seq, device_id, type, severity, ts, received_at,"
    " stored_at, location, data)"
    " SELECT u.id, :site_id, :gateway_id, u.seq, u.device_id, u.type, u.severity, u.ts, u.received_at,"
    " :stored_at, u.location, u.data"
    " FROM unnest(CAST(:ids AS varchar[]), CAST(:seqs AS bigint[]), CAST(:devices AS varchar[]),"
    " CAST(:types AS varchar[]), CAST(:severities AS varchar[]), CAST(:ts AS timestamptz[]),"
    " CAST(:received AS timestamptz[]), CAST(:locations AS json[]), CAST(:data AS json[]))"
    " AS u(id, seq, device_id, type, severity, ts, received_at, location, data)"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)


async def _insert_events_pg(
    session: AsyncSession, batch: EventBatch, events: list[Event], now: datetime
) -> list[str]:
    locations: dict[tuple[Any, ...], str] = {}
    result = await session.execute(
        _PG_INSERT,
        {
            "site_id": batch.site_id,
            "gateway_id": batch.gateway_id,
            "stored_at": now,
            "ids": [e.id for e in events],
            "seqs": [e.seq for e in events],
            "devices": [e.device_id for e in events],
            "types": [e.type for e in events],
            "severities": [_severity(e.type) for e in events],
            "ts": [e.ts for e in events],
            "received": [e.received_at for e in events],
            "locations": [_location_json(e.location, locations) for e in events],
            "data": [_json(e.data) for e in events],
        },
    )
    return list(result.scalars())


_DEVICE_STATE_SQLITE = (  # ?1: [[id, state JSON text], ...]
    "UPDATE devices SET state = u.value ->> 1, updated_at = ?2 FROM json_each(?1) AS u"
    " WHERE devices.id = u.value ->> 0"
)
_DEVICE_STATE_PG = "UPDATE devices SET state = $1::json, updated_at = $2 WHERE id = $3"
_READINGS_INSERT_SQLITE = "INSERT INTO readings (device_id, point, ts_ms, value)"
_READINGS_CONFLICT = " ON CONFLICT (device_id, point, ts_ms) DO NOTHING"
_READINGS_INSERT_PG = (
    "INSERT INTO readings (device_id, point, ts_ms, value) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (device_id, point, ts_ms) DO NOTHING"
)


_DEVICE_STATES_SQLITE = (
    "SELECT json_group_array(json_array(id, state, site_id)) FROM devices"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
# A device first heard of in its events, as the ORM insert of _apply_to_devices_pg writes it on SQLite.
_DEVICE_INSERT_SQLITE = (
    "INSERT INTO devices (id, site_id, gateway_id, kind, model, state, online, updated_at)"
    " VALUES (?, ?, ?, 'unknown', '', '{}', 1, ?) ON CONFLICT (id) DO NOTHING"
)


def _device_changes(
    events: list[Event],
) -> tuple[dict[str, dict[str, tuple[Any, datetime]]], list[tuple[str, str, int, float]]]:
    """For ``events`` in (ts, seq) order: per device and state key the last value with its time, and
    every reading row, in that order."""
    # Per device and state key, only the last event (in (ts, seq) order) can decide the merged value:
    # see cloud.state.merge_latest.
    latest: dict[str, dict[str, tuple[Any, datetime]]] = {}
    readings: list[tuple[str, str, int, float]] = []
    for e in events:
        event_type, data = e.type, e.data
        updates = state_updates(event_type, data)
        if updates:
            per_device = latest.setdefault(e.device_id, {})
            for key, value in updates.items():
                per_device[key] = (value, e.ts)
        if event_type.startswith(_READING_TYPES):
            points = numeric_points(data)
            if points:
                ts_ms = int(e.ts.timestamp() * 1000)
                device_id = e.device_id
                readings += [(device_id, p, ts_ms, v) for p, v in points.items()]
    return latest, readings


async def _apply_to_devices_pg(
    session: AsyncSession,
    batch: EventBatch,
    events: list[Event],
    now: datetime,
    *,
    latest: dict[str, dict[str, tuple[Any, datetime]]],
    readings: list[tuple[str, str, int, float]],
) -> None:
    """One SELECT for the batch's devices, one UPDATE per device whose state changed, and every
    reading of the batch in one ``executemany``. ``events`` are in (ts, seq) order; ``latest`` and
    ``readings`` are their :func:`_device_changes`."""
    if not events:
        return
    device_ids = sorted({e.device_id for e in events})

    # Columns, not ORM objects: always what the transaction sees now (several batches may share one
    # transaction and session), and nothing for the unit of work to track.
    sites: dict[str, str] = {}

    async def states_now() -> dict[str, dict[str, Any]]:
        query = select(Device.id, Device.state, Device.site_id).where(Device.id.in_(device_ids))
        rows = (await session.execute(query)).all()
        sites.update((i, site) for i, _, site in rows)
        return {i: state or {} for i, state, _ in rows}

    existing = await states_now()
    missing = [d for d in device_ids if d not in existing]
    if missing:
        await session.execute(
            _insert(session, Device)
            .values(
                [
                    {
                        "id": device_id,
                        "site_id": batch.site_id,
                        "gateway_id": batch.gateway_id,
                        "kind": "unknown",
                        "model": "",
                        "state": {},
                        "online": True,
                        "updated_at": now,
                    }
                    for device_id in missing
                ]
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        existing = await states_now()
    foreign = {d for d in device_ids if sites.get(d, batch.site_id) != batch.site_id}
    for device_id in foreign:
        _foreign_claim(device_id, sites[device_id], batch.site_id, batch.gateway_id)
    changed = []
    for device_id, updates in latest.items():
        before = existing.get(device_id)
        if before is None or device_id in foreign:
            continue
        state = merge_latest(before, updates)
        if state != before:
            changed.append((json.dumps(state), now, device_id))
    conn = await session.connection()
    if changed:
        await conn.exec_driver_sql(_DEVICE_STATE_PG, changed)
    if foreign:
        readings = [r for r in readings if r[0] not in foreign]
    if readings:
        await conn.exec_driver_sql(_READINGS_INSERT_PG, readings)


async def apply_status(session: AsyncSession, status: GatewayStatus, now: datetime) -> None:
    """Upsert the site, the gateway (online or not: the Last Will says ``online=false``) and its devices."""
    site_values: dict[str, Any] = {"updated_at": now}
    if status.site_name:
        site_values["name"] = status.site_name
    if status.timezone:
        site_values["timezone"] = status.timezone
    await session.execute(
        _insert(session, Site)
        .values(
            id=status.site_id, name=status.site_name, timezone=status.timezone, created_at=now, updated_at=now
        )
        .on_conflict_do_update(index_elements=["id"], set_=site_values)
    )
    # Reported back to operators and installers (GatewayOut.device_ids_taken): these devices' events
    # are stored, but update no device, until the site config renames them.
    taken = await foreign_devices(session, status.site_id, (d.id for d in status.devices))
    for device_id, owner in taken.items():
        _foreign_claim(device_id, owner, status.site_id, status.gateway_id)
    gw: dict[str, Any] = {
        "site_id": status.site_id,
        "online": status.online,
        "status_at": status.at,
        "status": {
            **status.model_dump(mode="json", exclude={"devices", "health"}),
            "device_ids_taken": list(taken),
        },
    }
    if status.online:
        gw["last_seen"] = now
    if status.software is not None:
        gw["software"] = status.software
    if status.health:
        gw["health"] = status.health
    await session.execute(
        _insert(session, Gateway)
        .values(id=status.gateway_id, clock_skewed=False, **{"status": {}, "health": {}, **gw})
        .on_conflict_do_update(index_elements=["id"], set_=gw)
    )
    for info in status.devices:
        values = {
            "site_id": status.site_id,
            "gateway_id": status.gateway_id,
            "kind": info.kind,
            "model": info.model,
            "name": info.name,
            "location": info.location.model_dump(exclude_none=True) if info.location else None,
            "online": True if status.online else None,
            "updated_at": now,
        }
        # Only a device of this site: another gateway of the site may take it over (a device moved to
        # a new gateway), another site's may not.
        await session.execute(
            _insert(session, Device)
            .values(id=info.id, state={}, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values, where=Device.site_id == status.site_id)
        )
    if not status.online:
        await session.execute(
            update(Device).where(Device.gateway_id == status.gateway_id).values(online=None, updated_at=now)
        )


def mark_silent_gateways(conn: Connection, now: datetime, after_s: float) -> list[str]:
    """Gateways not heard from for ``after_s`` go offline and their devices become unknown."""
    cutoff = now - timedelta(seconds=after_s)
    silent = select(Gateway.id).where(Gateway.online.is_(True), Gateway.last_seen < cutoff)
    ids = list(conn.execute(silent).scalars())
    if ids:
        conn.execute(update(Gateway).where(Gateway.id.in_(ids)).values(online=False))
        conn.execute(update(Device).where(Device.gateway_id.in_(ids)).values(online=None, updated_at=now))
    return ids
