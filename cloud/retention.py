"""Retention: events, readings and rejected events past their age are deleted, a chunk at a time.

Hundreds of estates send tens of millions of events and readings a day; kept for ever they fill the
database's disk, and every index on them grows with it. Each instance runs :meth:`Retention.run`, which
every ``retention_interval_s`` deletes:

* events stored (``stored_at``, the cloud's clock) more than ``retention_events_days`` ago. The range is
  found through the primary key: event ids are ULIDs, which begin with their creation time, so the rows
  older than the cutoff are those below the smallest id of that millisecond; ``stored_at`` is checked
  as well, so a gateway whose clock was years behind does not lose its events on the day they arrive;
* readings whose time (``ts_ms``) is more than ``retention_readings_days`` old, one device point at a
  time, found by seeking the primary key (device, point, time) rather than scanning the table;
* rejected events received more than ``retention_rejected_days`` ago.

0 days keeps that kind for ever. Never deleted here: commands and their audit trail (append-only, the
record of who opened what), work orders, the registry, accounts.

Each chunk (``CHUNK_ROWS`` rows) is its own transaction. On a SQLite file it runs on the writer thread,
never on the event loop, and the write lock goes back between chunks, so an operator's command waits
for at most one chunk, not for a year of history. With several instances on one PostgreSQL, a pass
runs on one of them at a time (a session advisory lock, per schema); the others skip theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import Connection, Table, bindparam, delete, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import db
from cloud.metrics import Metrics
from cloud.settings import CloudSettings
from cloud.tables import EventRow, Reading, RejectedEvent
from protocol.ids import id_floor
from protocol.models import utcnow

log = structlog.get_logger("steward.cloud.retention")
T = TypeVar("T")

CHUNK_ROWS = 2000

# SQLAlchemy types a mapped class's __table__ as a FromClause; these are Tables.
_events, _readings, _rejected = (cast(Table, t.__table__) for t in (EventRow, Reading, RejectedEvent))

_OLD_EVENTS = (
    select(_events.c.id)
    .where(_events.c.id < bindparam("floor"), _events.c.stored_at < bindparam("cutoff"))
    .order_by(_events.c.id)
    .limit(bindparam("n"))
)
_DELETE_EVENTS = delete(_events).where(_events.c.id.in_(_OLD_EVENTS.scalar_subquery()))

_OLD_REJECTED = (
    select(_rejected.c.key).where(_rejected.c.received_at < bindparam("cutoff")).limit(bindparam("n"))
)
_DELETE_REJECTED = delete(_rejected).where(_rejected.c.key.in_(_OLD_REJECTED.scalar_subquery()))

# The primary key (device_id, point, ts_ms) answers each of these with one seek.
_NEXT_DEVICE = (
    select(_readings.c.device_id)
    .where(_readings.c.device_id > bindparam("after"))
    .order_by(_readings.c.device_id)
    .limit(1)
)
_NEXT_POINT = (
    select(_readings.c.point)
    .where(_readings.c.device_id == bindparam("device"), _readings.c.point > bindparam("after"))
    .order_by(_readings.c.point)
    .limit(1)
)
_POINT_TIMES = (
    select(_readings.c.ts_ms)
    .where(_readings.c.device_id == bindparam("device"), _readings.c.point == bindparam("point"))
    .order_by(_readings.c.ts_ms)
)
_DELETE_READINGS = delete(_readings).where(
    _readings.c.device_id == bindparam("device"),
    _readings.c.point == bindparam("point"),
    _readings.c.ts_ms < bindparam("before"),
)


@dataclass(slots=True)
class Pruned:
    events: int = 0
    readings: int = 0
    rejected: int = 0


def _delete(conn: Connection, statement: Any, params: dict[str, Any]) -> int:
    return conn.execute(statement, params).rowcount or 0


def _next_key(conn: Connection, statement: Any, params: dict[str, Any]) -> str | None:
    value = conn.execute(statement, params).scalar()
    return None if value is None else str(value)


def _chunk_end(conn: Connection, device: str, point: str, cutoff_ms: int) -> int | None:
    """Where this point's next chunk of old readings ends (exclusive); None if it has none."""
    params = {"device": device, "point": point}
    oldest = conn.execute(_POINT_TIMES.limit(1), params).scalar()
    if oldest is None or oldest >= cutoff_ms:
        return None
    nth = conn.execute(_POINT_TIMES.limit(1).offset(CHUNK_ROWS), params).scalar()
    return cutoff_ms if nth is None or nth >= cutoff_ms else int(nth)


class Retention:
    def __init__(
        self,
        settings: CloudSettings,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.clock = clock

    async def run(self) -> None:
        """Prune every ``retention_interval_s`` until cancelled; a database error is logged and retried."""
        while True:
            try:
                await self.prune_once()
            except SQLAlchemyError as exc:
                log.error("retention.failed", error=str(exc)[:500])
            await asyncio.sleep(self.settings.retention_interval_s)

    async def prune_once(self) -> Pruned:
        async with self._turn() as ours:
            if not ours:
                log.debug("retention.skipped", reason="another instance is pruning")
                return Pruned()
            return await self._prune()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[bool]:
        """Whether this pass is ours: on PostgreSQL, only one instance's at a time (advisory locks are
        per database, so the key names the schema); SQLite's file has one cloud."""
        if not self.settings.is_postgres:
            yield True
            return
        key = zlib.crc32(f"steward.retention:{self.settings.database_schema or ''}".encode())
        engine = self.sessions.kw["bind"]
        async with engine.connect() as conn:
            ours = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            await conn.commit()  # the lock is the session's, not the transaction's: none is left open
            try:
                yield ours
            finally:
                if ours:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await conn.commit()

    async def _prune(self) -> Pruned:
        now = self.clock()
        settings, pruned = self.settings, Pruned()
        if settings.retention_events_days:
            cutoff = now - timedelta(days=settings.retention_events_days)
            params = {"floor": id_floor(int(cutoff.timestamp() * 1000)), "cutoff": cutoff, "n": CHUNK_ROWS}
            pruned.events = await self._chunks(_DELETE_EVENTS, params)
        if settings.retention_rejected_days:
            cutoff = now - timedelta(days=settings.retention_rejected_days)
            pruned.rejected = await self._chunks(_DELETE_REJECTED, {"cutoff": cutoff, "n": CHUNK_ROWS})
        if settings.retention_readings_days:
            cutoff = now - timedelta(days=settings.retention_readings_days)
            pruned.readings = await self._readings(int(cutoff.timestamp() * 1000))
        self.metrics.pruned["events"] += pruned.events
        self.metrics.pruned["readings"] += pruned.readings
        self.metrics.pruned["rejected_events"] += pruned.rejected
        if pruned.events or pruned.readings or pruned.rejected:
            log.info(
                "retention.pruned", events=pruned.events, readings=pruned.readings, rejected=pruned.rejected
            )
        return pruned

    async def _chunks(self, statement: Any, params: dict[str, Any]) -> int:
        total = 0
        while True:
            deleted = await self._write(_delete, statement, params)
            total += deleted
            if deleted < CHUNK_ROWS:
                return total

    async def _readings(self, cutoff_ms: int) -> int:
        total = 0
        async for device, point in self._points():
            while (end := await db.read(self.sessions, _chunk_end, device, point, cutoff_ms)) is not None:
                params = {"device": device, "point": point, "before": end}
                total += await self._write(_delete, _DELETE_READINGS, params)
        return total

    async def _points(self) -> AsyncIterator[tuple[str, str]]:
        """Every (device, point) that has readings, in key order, one index seek each."""
        device = await self._next(_NEXT_DEVICE, after="")
        while device is not None:
            point = await self._next(_NEXT_POINT, device=device, after="")
            while point is not None:
                yield device, point
                point = await self._next(_NEXT_POINT, device=device, after=point)
            device = await self._next(_NEXT_DEVICE, after=device)

    async def _next(self, statement: Any, **params: str) -> str | None:
        return await db.read(self.sessions, _next_key, statement, params)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` in a write transaction: on a SQLite file on its writer thread, off the event loop."""
        async with db.writes_on_thread(self.sessions) as writer:
            if writer is not None:
                return await writer.submit(fn, *args)
        return await db.write(self.sessions, fn, *args)


__all__ = ["CHUNK_ROWS", "Pruned", "Retention"]
