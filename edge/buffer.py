"""The gateway's durable store-and-forward queue: an event counts as received once it is in this SQLite file.

The MQTT client is not the source of truth; this buffer is. An event is deleted only when the cloud acks it,
so a crash, a reboot or a week without uplink loses nothing that :meth:`EventBuffer.record` returned.

Flow::

    gateway --record()--> pending queue --writer task--> one transaction per batch (group commit)
    uplink  --take_json()--> in flight (memory) --ack_soon()--> deleted | --release()--> unsent again

``take_json`` hands the uplink the events' wire JSON, built by SQLite, and resumes after the last seq it
handed out; ``take_batch`` is the same with validated ``Event`` models (tests, tools, and every resend).

Threads: one worker thread owns the ``sqlite3`` connection and runs every statement, so the event loop
never blocks on the disk and statements never interleave. :class:`_Store` is that synchronous half;
:class:`EventBuffer` is the thin async face over it.

Errors::

    BufferError            the buffer cannot do what was asked (closed, disk error, timeout)
    └── BufferCorrupt      SQLite reports the file damaged; reopening quarantines it

Bounds: past ``max_bytes`` telemetry goes first (oldest first), then state, then, only as a last resort and
logged as an error, access and safety events. Past ``max_age_days`` everything goes, whatever its severity
(that is the configured retention). Each eviction is counted and leaves a ``buffer.evicted`` event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import math
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import pydantic_core
import structlog
from pydantic import TypeAdapter, ValidationError

from protocol.ids import new_id
from protocol.models import MAX_EVENT_BYTES, Event, Location, Severity, event_severity, utcnow
from steward.config import BufferConfig

__all__ = [
    "GATEWAY_DEVICE_ID",
    "BufferCorrupt",
    "BufferError",
    "BufferStats",
    "EventBuffer",
    "EventDraft",
]

log = structlog.get_logger(__name__)

GATEWAY_DEVICE_ID = "gateway"
EVICTED_EVENT_TYPE = "buffer.evicted"

# Severity is stored as a rank so one index (rank, seq) serves both "safety first" and "evict telemetry
# oldest first" without a sort.
_RANK = {Severity.SAFETY: 0, Severity.ACCESS: 1, Severity.STATE: 2, Severity.TELEMETRY: 3}
_SEVERITY_OF_RANK = {rank: sev for sev, rank in _RANK.items()}
# Least valuable first: safety is the very last thing the gateway gives up.
_EVICTION_ORDER = (3, 2, 1, 0)

# One transaction holds at most this many rows unless a single record_many() asks for more; bounds how
# long one commit keeps later callers waiting.
MAX_ROWS_PER_COMMIT = 10_000
# record() waits this long for its commit; a stuck disk must surface as an error, not a hung driver.
COMMIT_TIMEOUT_S = 30.0
# How often the one timer for all waiting record() calls checks their deadlines (so a timeout fires up to
# this much late).
WATCHDOG_INTERVAL_S = 1.0
# Reads, acks and housekeeping share the same bound.
OP_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 30.0
# The writer wakes at least this often when idle to apply age retention.
MAINTENANCE_INTERVAL_S = 60.0
# Age retention runs at most this often (by the injected clock) after commits.
AGE_CHECK_INTERVAL = timedelta(seconds=60)
# Size eviction goes down to this fraction of max_bytes, so a full buffer does not evict on every commit.
LOW_WATER = 0.9
# Seen command ids are kept this long past their expiry; an older replay is rejected as expired anyway.
COMMAND_MARGIN = timedelta(days=1)
COMMAND_PRUNE_INTERVAL = timedelta(hours=1)
# The WAL is truncated back to this after checkpoints, so a burst does not leave a large -wal file.
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reuse a seq, even after every row is acked
    id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    type TEXT NOT NULL,
    severity INTEGER NOT NULL,
    ts INTEGER NOT NULL,                    -- microseconds since the Unix epoch, UTC
    received_at INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    payload TEXT NOT NULL                   -- JSON {"d": data, "l": location (omitted when none)}
);
CREATE INDEX IF NOT EXISTS events_severity_seq ON events (severity, seq);
CREATE TABLE IF NOT EXISTS seen_commands (
    id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evictions (
    type TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT INTO events (seq, id, device_id, type, severity, ts, received_at, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_COLUMNS = "seq, id, device_id, type, ts, received_at, payload"
# An event's wire JSON beyond its stored payload, at most: the id, seq, device id, type, two times and
# the keys (device ids and types are bounded by the protocol).
_EVENT_OVERHEAD = 400


def _iso_sql(column: str) -> str:
    """SQL for the wire form of a microsecond timestamp, ``2026-01-01T08:00:00.000000Z``: floor
    division, so a time before 1970 is right too (SQLite's ``/`` and ``%`` truncate toward zero)."""
    us = f"(({column} % 1000000) + 1000000) % 1000000"
    return (
        f"strftime('%Y-%m-%dT%H:%M:%S', ({column} - {us}) / 1000000, 'unixepoch') || printf('.%06dZ', {us})"
    )


# One event's wire JSON, built by SQLite from the stored row (what Event.model_dump_json() carries;
# the receiver parses it either way). json_extract keeps the stored JSON of data and location as JSON.
_JSON_COLUMNS = (
    "seq, json_object('id', id, 'seq', seq, 'device_id', device_id, 'type', type,"
    f" 'ts', {_iso_sql('ts')}, 'received_at', {_iso_sql('received_at')},"
    " 'location', json_extract(payload, '$.l'), 'data', json_extract(payload, '$.d'))"
)

_EVENT_LIST = TypeAdapter(list[Event])

T = TypeVar("T")
Row = tuple[int, str, str, str, int, int, int, str]


class BufferError(Exception):
    """The buffer cannot do what was asked: closed, a disk error, or a timeout."""


class BufferCorrupt(BufferError):
    """SQLite reports the buffer file damaged."""


@dataclass(slots=True)
class EventDraft:
    """What the gateway hands in; the buffer stamps ``id``, ``seq`` and ``received_at``."""

    device_id: str
    type: str
    ts: datetime
    data: dict[str, Any]
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int  # events stored, in flight or not
    in_flight: int  # taken by the uplink and not yet acked or released
    oldest_age_s: float | None  # age of the oldest stored event by received_at; None when empty
    size_bytes: int  # page_count * page_size of the database file
    evicted_total: int  # events evicted since the file was created
    evicted_by_type: dict[str, int] = field(default_factory=dict)


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // _US


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


@functools.lru_cache(maxsize=1024)
def _rank(event_type: str) -> int:
    return _RANK[event_severity(event_type)]


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _map_error(exc: sqlite3.Error, doing: str) -> BufferError:
    if _is_corruption(exc):
        return BufferCorrupt(f"buffer file is damaged while {doing}: {exc}; restart to quarantine it")
    return BufferError(f"buffer failed while {doing}: {exc}")


@dataclass(slots=True)
class _Pending:
    drafts: list[EventDraft]
    received_at: datetime
    future: asyncio.Future[list[Event]]
    deadline: float  # loop time by which the commit must have finished (COMMIT_TIMEOUT_S)


@dataclass(slots=True)
class _Eviction:
    reason: Literal["size", "age"]
    by_type: Counter[str]
    by_rank: Counter[int]


class _Store:
    """The synchronous half: owns the connection and the in-flight set. Runs only in the worker thread,
    except :meth:`release` and :meth:`available`, which take ``lock``."""

    def __init__(self, conn: sqlite3.Connection, config: BufferConfig, clock: Callable[[], datetime]) -> None:
        self.conn = conn
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        # Per class (safety, the rest): the last seq take() went past, the highest it ever went past,
        # and where a release() sends both back to. In flight lives in memory, so all start at zero.
        self.marks = [0, 0]
        self.handed = [0, 0]
        self.rewind_to: int | None = None
        self.commits = 0
        self.depth: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        self.next_seq = max(high[0] if high else 0, top or 0) + 1
        self.evicted: Counter[str] = Counter(
            dict(conn.execute("SELECT type, count FROM evictions").fetchall())
        )
        self.page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self.last_age_check: datetime | None = None
        self.last_command_prune: datetime | None = None

    # ---- opening ---------------------------------------------------------------------------------
    @classmethod
    def connect(cls, config: BufferConfig, clock: Callable[[], datetime]) -> _Store:
        conn = sqlite3.connect(config.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise BufferError(f"{config.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {config.synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            conn.executescript(_SCHEMA)
            # quick_check reads every page once; it finds damage a schema read alone misses, at start-up
            # rather than halfway through a drain.
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            return cls(conn, config, clock)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open(cls, config: BufferConfig, clock: Callable[[], datetime]) -> _Store:
        path = config.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BufferError(f"cannot create the buffer directory {path.parent}: {exc.strerror}") from exc
        try:
            return cls.connect(config, clock)
        except sqlite3.DatabaseError as exc:
            damaged = _is_corruption(exc) or str(exc).startswith("quick_check")
            if not damaged:
                raise BufferError(f"cannot open buffer {path}: {exc}") from exc
            moved = _quarantine(path, clock())
            # A crash loop on a damaged file would stop the gateway recording anything; a fresh file keeps
            # it working and the damaged one stays on disk for someone to inspect.
            log.error(
                "buffer.corrupt_quarantined",
                path=str(path),
                moved_to=str(moved),
                error=str(exc),
                consequence="events in the damaged file were not sent; starting with an empty buffer",
            )
        try:
            return cls.connect(config, clock)
        except sqlite3.Error as exc:
            raise BufferCorrupt(f"buffer {path} is unusable even after quarantine: {exc}") from exc

    # ---- writing ---------------------------------------------------------------------------------
    def _build(
        self, items: Sequence[tuple[list[EventDraft], datetime]], rows: list[Row]
    ) -> list[list[Event]]:
        """Validate and stamp the drafts of ``items``, appending their rows; any bad draft raises, and then
        no seq is used and no row is added."""
        seq = self.next_seq
        flat: list[dict[str, Any]] = []
        for drafts, received_at in items:
            for d in drafts:
                flat.append(
                    {
                        "id": new_id(),
                        "seq": seq,
                        "device_id": d.device_id,
                        "type": d.type,
                        "ts": d.ts,
                        "received_at": received_at,
                        "location": d.location,
                        "data": d.data,
                    }
                )
                seq += 1
        # One validator call for the whole batch costs far less per event than one call per record().
        events = _EVENT_LIST.validate_python(flat)
        # Drafts from one device share one Location object; dump it once, not per event.
        locations: dict[int, dict[str, Any]] = {}
        received: dict[datetime, int] = {}
        start = len(rows)
        try:
            for e in events:
                loc = e.location
                if loc is None:
                    payload: dict[str, Any] = {"d": e.data}
                else:
                    dumped = locations.get(id(loc))
                    if dumped is None:
                        dumped = locations[id(loc)] = loc.model_dump(exclude_none=True)
                    payload = {"d": e.data, "l": dumped}
                payload_utf8 = pydantic_core.to_json(payload)
                if len(payload_utf8) > MAX_EVENT_BYTES:
                    raise ValueError(
                        f"event {e.type} from {e.device_id}: its data and location are"
                        f" {len(payload_utf8):,} bytes as JSON, more than the limit of {MAX_EVENT_BYTES:,}"
                    )
                payload_json = payload_utf8.decode()
                received_us = received.get(e.received_at)
                if received_us is None:
                    received_us = received[e.received_at] = _to_us(e.received_at)
                rows.append(
                    (
                        e.seq,
                        e.id,
                        e.device_id,
                        e.type,
                        _rank(e.type),
                        _to_us(e.ts),
                        received_us,
                        payload_json,
                    )
                )
        except BaseException:
            del rows[start:]
            raise
        self.next_seq = seq
        out: list[list[Event]] = []
        pos = 0
        for drafts, _ in items:
            out.append(events[pos : pos + len(drafts)])
            pos += len(drafts)
        return out

    def insert(
        self, batch: Sequence[tuple[list[EventDraft], datetime]]
    ) -> tuple[list[list[Event] | Exception], bool]:
        """Commit every valid draft of ``batch`` in one transaction; return per item its events or its error,
        and whether housekeeping (size or age) is due."""
        rows: list[Row] = []
        results: list[list[Event] | Exception] = []
        first_seq = self.next_seq
        try:
            results.extend(self._build(batch, rows))
        except (ValidationError, ValueError, TypeError):
            # Slow path, only when some draft is bad: find which caller it belongs to, keep everyone else.
            for item in batch:
                try:
                    results.extend(self._build([item], rows))
                except (ValidationError, ValueError, TypeError) as exc:
                    results.append(exc)
        if not rows:
            return results, False
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(_INSERT, rows)
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            # Seqs of a failed commit are free again: keeps them dense, and nothing outside saw them.
            self.next_seq = first_seq
            raise
        self.commits += 1
        with self.lock:
            self.depth += len(rows)
        return results, self._due()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _used_bytes(self) -> int:
        # Freed pages stay in the file and are reused; counting only used pages lets eviction see progress
        # without a VACUUM, and the file never grows past max_bytes by more than one transaction.
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self.page_size)

    def _due(self) -> bool:
        if self._used_bytes() > self.config.max_bytes:
            return True
        last = self.last_age_check
        return last is None or self.clock() - last >= AGE_CHECK_INTERVAL

    # ---- bounds ----------------------------------------------------------------------------------
    def maintain(self) -> list[_Eviction]:
        """Apply age retention and the size bound; each eviction is one transaction with its own record."""
        done: list[_Eviction] = []
        now = self.clock()
        last = self.last_age_check
        if last is None or now - last >= AGE_CHECK_INTERVAL:
            self.last_age_check = now
            ev = self._evict_by_age(now)
            if ev:
                done.append(ev)
        if self._used_bytes() > self.config.max_bytes:
            ev = self._evict_by_size(now)
            if ev:
                done.append(ev)
        return done

    def _evict_by_age(self, now: datetime) -> _Eviction | None:
        cutoff = _to_us(now - timedelta(days=self.config.max_age_days))
        ev = _Eviction("age", Counter(), Counter())
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            while True:
                # Walk in seq order (rowid, no index needed) and stop at the first young event: seq follows
                # received_at, so this costs what it deletes, not a scan of the whole table.
                rows = self.conn.execute(
                    "SELECT seq, type, severity, received_at FROM events ORDER BY seq LIMIT ?",
                    (MAX_ROWS_PER_COMMIT,),
                ).fetchall()
                old = list(_takewhile_old(rows, cutoff))
                if old:
                    self._delete_seqs([r[0] for r in old])
                    for _, type_, rank, _ in old:
                        ev.by_type[type_] += 1
                        ev.by_rank[rank] += 1
                if len(old) < MAX_ROWS_PER_COMMIT:
                    break
            if not ev.by_type:
                self.conn.execute("ROLLBACK")
                return None
            self._record_eviction(ev, now)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return ev

    def _evict_by_size(self, now: datetime) -> _Eviction | None:
        low = int(self.config.max_bytes * LOW_WATER)
        ev = _Eviction("size", Counter(), Counter())
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for rank in _EVICTION_ORDER:
                # Estimates from the average row size are rough (pages free only when they empty), so take
                # a bounded number of measured steps rather than one big guess.
                for _ in range(20):
                    used = self._used_bytes()
                    if used <= low or self.depth <= 0:
                        break
                    per_row = max(used / self.depth, 32.0)
                    want = max(math.ceil((used - low) / per_row), 64)
                    rows = self.conn.execute(
                        "SELECT seq, type FROM events WHERE severity = ? ORDER BY seq LIMIT ?", (rank, want)
                    ).fetchall()
                    if not rows:
                        break
                    self.conn.execute(
                        "DELETE FROM events WHERE severity = ? AND seq <= ?", (rank, rows[-1][0])
                    )
                    self._forget([r[0] for r in rows])
                    for _, type_ in rows:
                        ev.by_type[type_] += 1
                    ev.by_rank[rank] += len(rows)
            if not ev.by_type:
                self.conn.execute("ROLLBACK")
                return None
            self._record_eviction(ev, now)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return ev

    def _delete_seqs(self, seqs: list[int]) -> int:
        cur = self.conn.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        self._forget(seqs, cur.rowcount)
        return cur.rowcount

    def _forget(self, seqs: Iterable[int], deleted: int | None = None) -> None:
        seqs = list(seqs)
        with self.lock:
            self.depth -= len(seqs) if deleted is None else deleted
            self.in_flight.difference_update(seqs)

    def _record_eviction(self, ev: _Eviction, now: datetime) -> None:
        """Inside the eviction's transaction: bump the lifetime counters and leave a ``buffer.evicted`` event,
        so the cloud learns exactly what it will never receive."""
        self.conn.executemany(
            "INSERT INTO evictions (type, count) VALUES (?, ?)"
            " ON CONFLICT (type) DO UPDATE SET count = count + excluded.count",
            list(ev.by_type.items()),
        )
        total = sum(ev.by_type.values())
        by_sev = {_SEVERITY_OF_RANK[r].value: n for r, n in sorted(ev.by_rank.items())}
        rows: list[Row] = []
        draft = EventDraft(
            device_id=GATEWAY_DEVICE_ID,
            type=EVICTED_EVENT_TYPE,
            ts=now,
            data={"reason": ev.reason, "total": total, "by_type": dict(ev.by_type), "by_severity": by_sev},
        )
        self._build([([draft], now)], rows)
        self.conn.executemany(_INSERT, rows)
        with self.lock:
            self.depth += 1
        self.evicted.update(ev.by_type)

    # ---- reading ---------------------------------------------------------------------------------
    def _rewind(self) -> bool:
        """Apply a pending ``release`` to the high-water marks; True if the next rows may have been
        handed out before (a resend)."""
        with self.lock:
            rewind = self.rewind_to
            self.rewind_to = None
        if rewind is not None:
            self.marks = [min(m, rewind) for m in self.marks]
        return any(m < h for m, h in zip(self.marks, self.handed, strict=True))

    def _pick(
        self, limit: int, columns: str, max_bytes: int | None = None, overhead: int = 1
    ) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows not in flight, safety first then by seq, as ``columns`` (seq first).
        ``max_bytes``: also stop before the rows' last column (JSON), plus ``overhead`` bytes each,
        would pass that many bytes in all; the first row is always taken (see ``MAX_EVENT_BYTES``).

        Each class (safety, the rest) resumes after its high-water mark, the last seq it handed out:
        every row at or below it is in flight or gone, so with batches in flight a deep backlog costs
        what a take returns, not a rescan of the in-flight rows. Only after ``release`` lowered a mark
        are in-flight rows met again, and skipped.
        """
        picked: list[tuple[Any, ...]] = []
        queries = (
            f"SELECT {columns} FROM events WHERE severity = 0 AND seq > ? ORDER BY seq",
            # `+severity` keeps the planner on the rowid order instead of the index (which would need a sort).
            f"SELECT {columns} FROM events WHERE seq > ? AND +severity != 0 ORDER BY seq",
        )
        in_flight = self.in_flight
        budget = max_bytes if max_bytes is not None else math.inf
        for cls, sql in enumerate(queries):
            if len(picked) >= limit or budget <= 0:
                break
            mark = self.marks[cls]
            cur = self.conn.execute(sql, (mark,))
            try:
                while len(picked) < limit and budget > 0:
                    chunk = cur.fetchmany(max(limit - len(picked), 256) if in_flight else limit - len(picked))
                    if not chunk:
                        break
                    for row in chunk:
                        if row[0] not in in_flight:
                            text = row[-1]
                            size = (len(text) if text.isascii() else len(text.encode())) + overhead
                            if size > budget and picked:
                                budget = 0  # the mark stays before this row: the next take starts at it
                                break
                            budget -= size
                            picked.append(row)
                        mark = row[0]
                        if len(picked) >= limit:
                            break
            finally:
                cur.close()
            self.marks[cls] = mark
            self.handed[cls] = max(self.handed[cls], mark)
        return picked

    def _mark_taken(self, seqs: list[int]) -> None:
        with self.lock:
            self.in_flight.update(seqs)

    def take(self, limit: int) -> list[Event]:
        """Up to ``limit`` events not in flight, safety first then by seq; marks them in flight."""
        self._rewind()
        return self._decode(self._pick(limit, _SELECT_COLUMNS))

    def _decode(self, picked: list[tuple[Any, ...]]) -> list[Event]:
        """Full validation, row by row: an undecodable row is dropped (and logged), never sent."""
        events: list[Event] = []
        bad: list[int] = []
        for row in picked:
            try:
                events.append(_event_from_row(row))
            except (ValidationError, ValueError, OverflowError) as exc:
                # One undecodable row must not block the queue forever; say so and drop it.
                log.error("buffer.bad_row_dropped", seq=row[0], error=str(exc))
                bad.append(row[0])
        if bad:
            self._delete_seqs(bad)
        self._mark_taken([e.seq for e in events])
        return events

    def take_json(self, limit: int, max_bytes: int | None = None) -> tuple[list[int], bytes]:
        """Like :meth:`take`, but the events come as their wire JSON (comma-separated, no brackets),
        built by SQLite from the stored row, with no model per event: the uplink's hot path.

        The rows were validated when they were written, so a first send trusts them. A resend (after
        ``release``: no ack came, perhaps because the cloud refused the batch) and rows SQLite cannot
        read as JSON go through :meth:`take`'s full validation instead, which drops a damaged row rather
        than sending it again and again. ``max_bytes`` bounds the joined JSON (a resend's by its stored
        payloads, which are most of each event's JSON).
        """
        if not self._rewind():
            marks, handed = list(self.marks), list(self.handed)
            try:
                picked = self._pick(limit, _JSON_COLUMNS, max_bytes)
            except sqlite3.OperationalError as exc:
                if "JSON" not in str(exc):
                    raise
                self.marks, self.handed = marks, handed
            else:
                seqs = [row[0] for row in picked]
                self._mark_taken(seqs)
                return seqs, ",".join([row[1] for row in picked]).encode()
        events = self._decode(self._pick(limit, _SELECT_COLUMNS, max_bytes, _EVENT_OVERHEAD))
        return [e.seq for e in events], b",".join([e.to_bytes() for e in events])

    def ack(self, seqs: Sequence[int]) -> int:
        """Delete acked events: one statement per run of consecutive seqs (a batch is mostly one run)."""
        ordered = sorted(set(seqs))
        if not ordered:
            return 0
        runs: list[tuple[int, int]] = []
        start = prev = ordered[0]
        for s in ordered[1:]:
            if s != prev + 1:
                runs.append((start, prev))
                start = s
            prev = s
        runs.append((start, prev))
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            cur = self.conn.executemany("DELETE FROM events WHERE seq BETWEEN ? AND ?", runs)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._forget(ordered, cur.rowcount)
        return cur.rowcount

    def release(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        if not seqs:
            return
        with self.lock:
            self.in_flight.difference_update(seqs)
            # Below the high-water marks again: the next take lowers them to here (see _pick).
            low = min(seqs) - 1
            self.rewind_to = low if self.rewind_to is None else min(self.rewind_to, low)

    def available(self) -> bool:
        with self.lock:
            return self.depth > len(self.in_flight)

    def stats(self) -> BufferStats:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        # The lowest seq stands in for the oldest: min(received_at) would scan the whole table.
        row = self.conn.execute("SELECT received_at FROM events ORDER BY seq LIMIT 1").fetchone()
        age = None if row is None else max(0.0, (self.clock() - _from_us(row[0])).total_seconds())
        with self.lock:
            depth, in_flight = self.depth, len(self.in_flight)
        return BufferStats(
            depth=depth,
            in_flight=in_flight,
            oldest_age_s=age,
            size_bytes=pages * self.page_size,
            evicted_total=sum(self.evicted.values()),
            evicted_by_type=dict(self.evicted),
        )

    # ---- commands --------------------------------------------------------------------------------
    def remember(self, command_id: str, expires_at: datetime) -> bool:
        now = self.clock()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            last = self.last_command_prune
            if last is None or now - last >= COMMAND_PRUNE_INTERVAL:
                self.conn.execute(
                    "DELETE FROM seen_commands WHERE expires_at < ?", (_to_us(now - COMMAND_MARGIN),)
                )
            cur = self.conn.execute(
                "INSERT INTO seen_commands (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (command_id, _to_us(expires_at)),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if last is None or now - last >= COMMAND_PRUNE_INTERVAL:
            self.last_command_prune = now
        return cur.rowcount == 1

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            # Folds the WAL into the main file so the next start (or a copy of the file) needs no replay.
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


def _takewhile_old(rows: list[Any], cutoff: int) -> Iterable[Any]:
    for row in rows:
        if row[3] >= cutoff:
            return
        yield row


def _event_from_row(row: tuple[Any, ...]) -> Event:
    seq, id_, device_id, type_, ts, received_at, payload = row
    body = json.loads(payload)
    return Event(
        id=id_,
        seq=seq,
        device_id=device_id,
        type=type_,
        ts=_from_us(ts),
        received_at=_from_us(received_at),
        location=body.get("l"),
        data=body.get("d", {}),
    )


def _quarantine(path: Path, now: datetime) -> Path:
    """Move a damaged database and its WAL/SHM aside (a stale WAL beside a new file could be replayed)."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


class EventBuffer:
    """Durable, bounded, ordered queue of events between the drivers and the uplink.

    Durability follows ``config.synchronous``: with ``NORMAL`` (WAL) a committed event survives the
    process being killed (SIGKILL, OOM, crash) but the last transactions before a power loss may roll
    back; with ``FULL`` it also survives power loss, at the cost of an fsync per commit. Group commit
    keeps that cost per batch, not per event.
    """

    def __init__(self, store: _Store, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False
        self._closed = False
        self._close_lock = asyncio.Lock()
        self._broken: BaseException | None = None
        self._committing: list[_Pending] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._acks: list[tuple[list[int], asyncio.Future[None] | None]] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write_loop(), name="edge-buffer-writer")

    @classmethod
    async def open(cls, config: BufferConfig, *, clock: Callable[[], datetime] = utcnow) -> EventBuffer:
        """Open (or create) the buffer at ``config.path``; a damaged file is quarantined, never fatal.

        ``synchronous=NORMAL`` survives a killed process; ``synchronous=FULL`` also survives power loss.
        """
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-buffer")
        try:
            fut = executor.submit(_Store.open, config, clock)
            async with asyncio.timeout(OP_TIMEOUT_S * 4):
                store = await asyncio.wrap_future(fut)
            buffer = cls(store, executor)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info(
            "buffer.opened",
            path=str(config.path),
            depth=store.depth,
            next_seq=store.next_seq,
            synchronous=config.synchronous,
        )
        # Retention applies at start-up too: a gateway that was off for months starts within bounds.
        await buffer._housekeep()
        return buffer

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def commits(self) -> int:
        """Insert transactions committed since open (group commit makes this far less than events)."""
        return self._store.commits

    @property
    def path(self) -> Path:
        return self._store.config.path

    # ---- recording -------------------------------------------------------------------------------
    async def record(self, draft: EventDraft) -> Event:
        """Store one event; returns only once it is committed. Concurrent calls share one transaction."""
        return (await self._submit([draft]))[0]

    async def record_many(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Store all drafts in one transaction: all of them are committed, or none."""
        if not drafts:
            return []
        return await self._submit(list(drafts))

    async def _submit(self, drafts: list[EventDraft]) -> list[Event]:
        if self._closing:
            raise BufferError("the buffer is closed")
        if self._broken is not None:
            raise BufferError(f"the buffer writer stopped: {self._broken!r}")
        fut: asyncio.Future[list[Event]] = self._loop.create_future()
        self._pending.append(_Pending(drafts, self._clock(), fut, self._loop.time() + COMMIT_TIMEOUT_S))
        self._wake.set()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(WATCHDOG_INTERVAL_S, self._expire_overdue)
        return await fut

    def _expire_overdue(self) -> None:
        """Fail the callers whose commit is past its deadline. One timer for all of them: a timeout
        context per record() cost a third of a concurrent record's time on the event loop."""
        self._watchdog = None
        now = self._loop.time()
        waiting = False
        for p in (*self._committing, *self._pending):
            if p.future.done():
                continue
            if p.deadline <= now:
                # The write may still land later; the caller must treat the event as possibly recorded.
                p.future.set_exception(BufferError(f"commit did not finish within {COMMIT_TIMEOUT_S:.0f} s"))
            else:
                waiting = True
        if waiting:
            self._watchdog = self._loop.call_later(WATCHDOG_INTERVAL_S, self._expire_overdue)

    def _clock(self) -> datetime:
        return self._store.clock()

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(MAINTENANCE_INTERVAL_S):
                            await self._wake.wait()
                    except TimeoutError:
                        await self._housekeep()
                    continue
                batch = self._next_batch()
                await self._commit(batch)
        except BaseException as exc:
            self._broken = exc
            for p in self._pending:
                if not p.future.done():
                    p.future.set_exception(BufferError(f"the buffer writer stopped: {exc!r}"))
            self._pending.clear()
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("buffer.writer_crashed")
            raise

    def _next_batch(self) -> list[_Pending]:
        take, rows = 0, 0
        for p in self._pending:
            if take and rows + len(p.drafts) > MAX_ROWS_PER_COMMIT:
                break
            take += 1
            rows += len(p.drafts)
        batch, self._pending = self._pending[:take], self._pending[take:]
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        self._committing = batch
        try:
            # No timeout here: the job cannot be cancelled once running, and the watchdog already fails
            # callers past their deadline; abandoning it would let the next commit race it on the connection.
            results, due = await self._loop.run_in_executor(
                self._executor, self._store.insert, [(p.drafts, p.received_at) for p in batch]
            )
        except sqlite3.Error as exc:
            err = _map_error(exc, "committing events")
            log.error("buffer.commit_failed", events=sum(len(p.drafts) for p in batch), error=str(exc))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            self._committing = []
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue  # the caller gave up (timeout or cancel); the events are stored regardless
            if isinstance(result, Exception):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
        self._changed.set()
        if due:
            await self._housekeep()

    async def _housekeep(self) -> None:
        try:
            evictions = await self._loop.run_in_executor(self._executor, self._store.maintain)
        except sqlite3.Error as exc:
            log.error("buffer.housekeeping_failed", error=str(exc))
            return
        for ev in evictions:
            self._log_eviction(ev)
        if evictions:
            self._changed.set()

    def _log_eviction(self, ev: _Eviction) -> None:
        total = sum(ev.by_type.values())
        critical = ev.by_rank[0] + ev.by_rank[1]
        fields = {"reason": ev.reason, "total": total, "by_type": dict(ev.by_type), "path": str(self.path)}
        if critical and ev.reason == "size":
            # Alarms and access records are what the estate keeps the gateway for; losing them is an incident.
            log.error("buffer.evicted_safety_or_access", safety_or_access=critical, **fields)
        else:
            log.warning("buffer.evicted", **fields)

    # ---- draining --------------------------------------------------------------------------------
    async def take_batch(self, limit: int) -> list[Event]:
        """Up to ``limit`` unsent events, safety first then by seq, now in flight until ack() or release().

        In flight lives in memory only: after a restart everything is unsent again and the cloud
        de-duplicates by id.
        """
        if limit <= 0:
            return []
        events = await self._take(self._store.take, limit)
        return events

    async def take_json(self, limit: int, max_bytes: int | None = None) -> tuple[list[int], bytes]:
        """:meth:`take_batch` for the uplink: the seqs taken, and their events' wire JSON joined by
        commas (the inside of ``EventBatch.events``), without building a model per event; at most
        ``max_bytes`` of it, or one event if that is larger."""
        if limit <= 0:
            return [], b""
        return await self._take(functools.partial(self._store.take_json, max_bytes=max_bytes), limit)

    async def _take(self, fn: Callable[[int], T], limit: int) -> T:
        self._check_open()
        fut = self._executor.submit(fn, limit)
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                return await asyncio.wrap_future(fut)
        except BaseException as exc:
            # The caller will never see these events, so nobody would release them: do it here when the
            # job finishes, or they would stay in flight until restart.
            fut.add_done_callback(self._release_abandoned)
            if isinstance(exc, TimeoutError):
                raise BufferError(f"take_batch did not finish within {OP_TIMEOUT_S:.0f} s") from None
            if isinstance(exc, sqlite3.Error):
                raise _map_error(exc, "reading events") from exc
            raise

    def _release_abandoned(self, fut: concurrent.futures.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        result = fut.result()
        self._store.release(result[0] if isinstance(result, tuple) else [e.seq for e in result])
        with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
            self._loop.call_soon_threadsafe(self._changed.set)

    async def ack(self, seqs: Sequence[int]) -> None:
        """The cloud stored these: delete them. Unknown seqs are ignored (already evicted or acked).

        Returns once they are deleted; acks that arrive meanwhile share the next transaction.
        """
        if not seqs:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue_ack(list(seqs), fut)
        await fut

    def ack_soon(self, seqs: Sequence[int]) -> None:
        """Like :meth:`ack` without waiting: the uplink's next ack need not wait for this DELETE.

        The events stay in flight (never taken again) until deleted; if the delete fails they are
        released, so they go again and the cloud de-duplicates them: nothing is lost either way.
        """
        if seqs and not self._closing:
            self._queue_ack(list(seqs), None)

    def _queue_ack(self, seqs: list[int], fut: asyncio.Future[None] | None) -> None:
        self._acks.append((seqs, fut))
        if self._ack_flusher is None or self._ack_flusher.done():
            self._ack_flusher = self._loop.create_task(self._flush_acks(), name="edge-buffer-acks")

    async def _flush_acks(self) -> None:
        """Delete every queued ack in one transaction per round; acks queued during a round go in the
        next. Not cancelled by close(), which waits for it: an ack already received is applied."""
        while self._acks:
            acks, self._acks = self._acks, []
            seqs = [s for chunk, _ in acks for s in chunk]
            try:
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await self._loop.run_in_executor(self._executor, self._store.ack, seqs)
            except asyncio.CancelledError:
                # The loop is going away; whoever waits must not hang. Undeleted events go again later.
                for _, fut in acks + self._acks:
                    if fut is not None and not fut.done():
                        fut.set_exception(BufferError("the buffer stopped before the ack was applied"))
                self._acks.clear()
                raise
            except Exception as exc:
                err = (
                    _map_error(exc, "acking events")
                    if isinstance(exc, sqlite3.Error)
                    else BufferError(f"acking events failed: {exc!r}")
                )
                orphaned = [s for chunk, fut in acks if fut is None for s in chunk]
                if orphaned:
                    log.error("buffer.ack_failed_will_resend", events=len(orphaned), error=str(err))
                    self.release(orphaned)
                for _, fut in acks:
                    if fut is not None and not fut.done():
                        fut.set_exception(err)
                continue
            for _, fut in acks:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def release(self, seqs: Sequence[int]) -> None:
        """Make these unsent again (resend after a timeout or link loss)."""
        self._store.release(seqs)
        self._changed.set()

    async def wait_for_events(self, timeout: float) -> bool:
        """True as soon as unsent, not-in-flight events exist; False if none appeared within ``timeout``."""
        deadline = self._loop.time() + timeout
        while not self._store.available():
            remaining = deadline - self._loop.time()
            if remaining <= 0 or self._closing:
                return False
            self._changed.clear()
            if self._store.available():  # re-check after clear: a set() in between must not be lost
                return True
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self._store.available()
        return True

    async def stats(self) -> BufferStats:
        return await self._run(self._store.stats, doing="reading stats")

    # ---- commands --------------------------------------------------------------------------------
    async def remember_command(self, command_id: str, expires_at: datetime) -> bool:
        """True the first time ``command_id`` is seen, False on a replay; survives restarts.

        Ids are kept at least until ``expires_at`` + one day; a replay after that is refused as expired.
        """
        return await self._run(self._store.remember, command_id, expires_at, doing="remembering a command")

    # ---- lifecycle -------------------------------------------------------------------------------
    async def close(self) -> None:
        """Commit everything already handed in, stop the writer and close the file. Safe to call twice."""
        async with self._close_lock:
            if self._closed:
                return
            self._closing = True
            self._wake.set()
            self._changed.set()
            try:
                # asyncio.wait, not await: a writer that died has already failed its callers and logged why.
                done, _ = await asyncio.wait({self._writer}, timeout=CLOSE_TIMEOUT_S)
                if not done:
                    log.error("buffer.close_timeout", pending=len(self._pending))
                    self._writer.cancel()
                    await asyncio.wait({self._writer}, timeout=5)
                if self._ack_flusher is not None:
                    await asyncio.wait({self._ack_flusher}, timeout=OP_TIMEOUT_S)
            finally:
                try:
                    await self._loop.run_in_executor(self._executor, self._store.close)
                finally:
                    self._executor.shutdown(wait=False)
                    self._closed = True
            log.info("buffer.closed", path=str(self.path))

    def _check_open(self) -> None:
        if self._closing:
            raise BufferError("the buffer is closed")

    async def _run(self, fn: Callable[..., T], *args: Any, doing: str) -> T:
        self._check_open()
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                return await self._loop.run_in_executor(self._executor, fn, *args)
        except TimeoutError:
            raise BufferError(f"{doing} did not finish within {OP_TIMEOUT_S:.0f} s") from None
        except sqlite3.Error as exc:
            raise _map_error(exc, doing) from exc
