"""Engine, sessions and migrations. The engine is made in the app's lifespan, never at import.

Two kinds of session share one engine and pool:

- :func:`make_sessions`: for anything that may write. On SQLite every transaction is ``BEGIN IMMEDIATE``
  (the write lock is taken at BEGIN), so a read-then-write transaction never works from a stale snapshot,
  and ingest's "which of these ids are stored" check is race-free.
- :func:`make_read_sessions`: for pure reads (a GET, a long-poll). On SQLite a plain, deferred ``BEGIN``:
  under WAL a reader sees the last commit and neither waits for nor blocks a writer. A statement other
  than a read in one of these raises :class:`ReadOnlySessionError` before it reaches the database.

On SQLite one instance's writers also queue on an ``asyncio.Lock`` (FIFO, taken before ``BEGIN IMMEDIATE``,
given back when the connection returns to the pool). Without it, writers that collide wait in SQLite's
busy handler, which *sleeps* 1, 2, 5, 10, 15 ... ms between retries even when the lock was free again
after 0.3 ms. ``busy_timeout`` still covers other processes on the same file.

Short transactions on a command's round trip go through :func:`write` and :func:`read` instead: a plain
function of a synchronous :class:`~sqlalchemy.Connection`, the same code on both databases. On a SQLite
file the whole transaction runs at once on a connection of the event loop's own, which never waits (when
another process holds the lock, a thread runs it instead; see :class:`_SqliteThreads`); through the async
session each statement (BEGIN, every query, COMMIT) was a hand-off to aiosqlite's thread and back, about
1 ms apiece on a busy loop. Elsewhere (PostgreSQL, an in-memory SQLite) it runs in the async connection's
``run_sync``.

A long transaction (ingest's group commit, many statements) goes to the writer thread instead, never
the loop: :func:`writes_on_thread` holds the write lock while a :class:`ThreadWriter` hands one or more
transactions over, which the thread runs back to back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, TypeVarTuple

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Dialect, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InvalidRequestError, MissingGreenlet, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

from cloud.settings import CloudSettings

log = structlog.get_logger("steward.cloud.db")
MIGRATIONS = Path(__file__).with_name("migrations")
# Execution option carried by the read-only sessions' engine (see make_read_sessions).
READ_ONLY = "steward_read_only"
# What a read-only connection may send: the reads themselves and the BEGIN that _begin emits.
_READ_PREFIXES = ("SELECT", "WITH", "BEGIN", "PRAGMA", "EXPLAIN")
# The same as SQLite's busy_timeout: how long a writer waits for this instance's write lock.
WRITE_LOCK_TIMEOUT_S = 30.0
_HOLDS_WRITE_LOCK = "steward_holds_write_lock"
# Readers that run a whole read transaction on a thread (see _SqliteThreads); long-polls and API reads.
_READ_THREADS = 2
# How often, at most, a commit (through _SqliteThreads) starts a passive WAL checkpoint on a thread of
# its own: during a backlog's drain every quarter second copies ~6 MB back beside the writes.
CHECKPOINT_INTERVAL_S = 0.25
# A WAL that passive checkpoints have let grow past this (writes never paused long enough for one to
# copy it all back) gets one under the write lock, which completes, and the WAL starts afresh.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")


class ReadOnlySessionError(InvalidRequestError):
    """A write was attempted in a read-only session (on SQLite its deferred BEGIN could not upgrade
    safely to a write from a possibly stale snapshot)."""


def make_engine(settings: CloudSettings) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if settings.is_postgres:
        if settings.database_schema:
            connect_args["server_settings"] = {"search_path": settings.database_schema}
        engine = create_async_engine(settings.database_url, connect_args=connect_args, pool_pre_ping=True)
    else:
        path = settings.database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(settings.database_url, connect_args={"timeout": 30})

        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        write_lock = _WriteLock()
        if path and path != ":memory:":
            threads = _SqliteThreads(engine.url.set(drivername="sqlite"), write_lock)
            _THREADS[engine.sync_engine.dialect] = threads
            event.listen(engine.sync_engine, "engine_disposed", lambda _engine: threads.dispose())

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            # Readers take no lock at BEGIN, so they never queue behind ingest on the write lock.
            # Writers take it at BEGIN: a deferred transaction that reads and then writes while another
            # commits fails (or stalls) on upgrading its stale snapshot under WAL.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
                return
            acquired = write_lock.acquire(conn.info)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                if acquired:
                    write_lock.release(conn.info)
                raise

        @event.listens_for(engine.sync_engine.pool, "checkin")
        def _checkin(_dbapi_conn: Any, record: Any) -> None:
            write_lock.release(record.info)

        @event.listens_for(engine.sync_engine.pool, "detach")
        def _detach(_dbapi_conn: Any, record: Any) -> None:
            write_lock.release(record.info)

        @event.listens_for(engine.sync_engine.pool, "invalidate")
        def _invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
            # The connection is being closed, and SQLite's lock with it; its record's info is cleared
            # before reuse, so this is the last chance to give ours back.
            write_lock.release(record.info)

        @event.listens_for(engine.sync_engine.pool, "close")
        def _close(dbapi_conn: Any, _record: Any) -> None:
            _rollback_before_close(dbapi_conn)

        @event.listens_for(engine.sync_engine.pool, "close_detached")
        def _close_detached(dbapi_conn: Any) -> None:
            _rollback_before_close(dbapi_conn)

    event.listen(engine.sync_engine, "before_cursor_execute", _read_only_guard)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver issues no BEGIN of its own: the "begin" listeners choose which one each transaction gets.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _read_only_guard(
    conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    if conn.get_execution_options().get(READ_ONLY) and not statement.lstrip().upper().startswith(
        _READ_PREFIXES
    ):
        raise ReadOnlySessionError(f"write in a read-only session: {statement[:80]!r}")


# SQLite file engines' transaction threads, by the engine's dialect: the one object that the engine, the
# engines execution_options() derives from it and the engine after dispose() all share.
_THREADS: weakref.WeakKeyDictionary[Dialect, _SqliteThreads] = weakref.WeakKeyDictionary()


class _SqliteThreads:
    """Whole transactions for one SQLite file, on synchronous engines of their own.

    First on the event loop itself: a command's transactions are a few statements that SQLite runs in
    well under a millisecond, and a hand-off to a thread and back cost more than that (the thread
    also competes for the GIL with the loop it hands back to). That connection never waits: its
    ``busy_timeout`` is 0, so when another process holds the database's lock, the transaction goes to
    the writer thread (or a reader thread), which waits for it there, off the loop.

    Neither connection checkpoints the WAL at commit: a checkpoint copies the WAL into the database
    file and syncs it (~10 ms for 4 MB here), and SQLite's automatic one ran inside whichever commit
    crossed 1,000 pages, holding the write lock while a command waited behind it (the command round
    trip's slowest percent). ``CHECKPOINT_INTERVAL_S`` after a commit, a passive one runs on a thread
    of its own, without the write lock (writers go on meanwhile), and again as long as commits come.
    When writes never pause long enough for one to copy the whole WAL back (a backlog draining), the
    WAL cannot start afresh and grows; past ``WAL_LIMIT_BYTES`` the next writer to finish holds the
    write lock on until a checkpoint has run to completion.

    Writers take the async engine's :class:`_WriteLock` first, so they take turns with the async
    sessions' writers; readers use a deferred ``BEGIN`` (under WAL they neither wait for nor block a
    writer). Threads start on first use and stop when the async engine is disposed."""

    def __init__(self, url: Any, write_lock: _WriteLock) -> None:
        # check_same_thread: a pooled connection moves between this engine's threads, one user at a time.
        self.engine: Engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        self.direct: Engine = create_engine(url, connect_args={"check_same_thread": False})
        for engine, pragmas in ((self.engine, _thread_pragmas), (self.direct, _direct_pragmas)):
            event.listen(engine, "connect", pragmas)
            event.listen(engine, "begin", _begin_here)
            event.listen(engine, "before_cursor_execute", _read_only_guard)
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self.direct_read = self.direct.execution_options(**{READ_ONLY: True})
        self.write_lock = write_lock
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpointer: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpointing = threading.Lock()  # held while the checkpointer thread has work
        self._dirty = False  # commits since the checkpointer last looked
        self._stop = threading.Event()
        self.wal_over_limit = False  # the next writer to finish runs a checkpoint to completion
        # The event loop's own two connections (read-only or not), kept checked out: a pool checkout,
        # its reset and its return cost a third of a command's short transaction.
        self._held: dict[bool, Connection] = {}

    def _on_loop(self, read_only: bool) -> Connection:
        conn = self._held.get(read_only)
        if conn is None or conn.closed or conn.invalidated or conn.in_transaction():
            if conn is not None:
                conn.close()
            conn = self._held[read_only] = (self.direct_read if read_only else self.direct).connect()
        return conn

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        await self.write_lock.take()
        try:
            result = self._write(self._on_loop(False), fn, args)
        except OperationalError as exc:
            if not _busy(exc):
                self.give_back()
                raise
        except BaseException:
            self.give_back()
            raise
        else:
            self.give_back()
            return result
        # Another process holds SQLite's lock (nothing ran: BEGIN IMMEDIATE is the first statement):
        # wait for it on the writer thread, still holding this instance's lock.
        return await self._on_writer(fn, args)

    async def _on_writer(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn`` in a transaction on the writer thread; the caller holds the write lock, which goes back
        when the transaction has ended."""
        try:
            job = self._submit_write(self._write, self.engine, fn, args)
        except BaseException:
            self.give_back()
            raise
        try:
            return await asyncio.wrap_future(job)
        finally:
            # A cancelled caller does not stop a transaction already running: the lock goes back when it
            # has committed or rolled back, not before.
            self.give_back_after(job)

    def give_back(self) -> None:
        """End a writer's hold on the write lock; first, if the WAL has grown past its limit, run a
        checkpoint on the writer thread (no writer of this instance can start meanwhile)."""
        if not self.wal_over_limit:
            self.write_lock.give_back()
            return
        self.wal_over_limit = False
        checkpoint = self._submit_write(_checkpoint, self.engine)
        checkpoint.add_done_callback(lambda _job: self.write_lock.give_back())

    def give_back_after(self, job: concurrent.futures.Future[Any]) -> None:
        """:meth:`give_back` once ``job``, on the writer thread, has ended."""
        if job.done():
            self.give_back()
        else:
            job.add_done_callback(lambda _job: self.give_back())

    def _write(self, source: Engine | Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        result = self._run(source, fn, args)
        self._dirty = True
        if self._checkpointing.acquire(blocking=False):
            if self._checkpointer is None:
                self._stop.clear()  # used again after dispose()
                self._checkpointer = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="steward-db-checkpoint"
                )
            self._checkpointer.submit(self._checkpoints)
        return result

    def _checkpoints(self) -> None:
        """On the checkpointer thread: a passive checkpoint CHECKPOINT_INTERVAL_S after a commit, for as
        long as commits come."""
        while True:
            try:
                while self._dirty:
                    if self._stop.wait(CHECKPOINT_INTERVAL_S):
                        return
                    self._dirty = False
                    # Even one that copies every page leaves the WAL growing: it starts afresh only if a
                    # writer begins with every page copied back, and under a steady stream of commits
                    # another has always committed first.
                    if _checkpoint(self.engine) > WAL_LIMIT_BYTES:
                        self.wal_over_limit = True
            finally:
                self._checkpointing.release()
            # A commit after the last look, while this still held the lock, started no thread of its own.
            if not self._dirty or not self._checkpointing.acquire(blocking=False):
                return

    def _submit_write(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steward-db-write")
        return self._writer.submit(fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._run(self._on_loop(True), fn, args)
        except OperationalError as exc:
            if not _busy(exc):
                raise
        if self._readers is None:
            self._readers = concurrent.futures.ThreadPoolExecutor(
                _READ_THREADS, thread_name_prefix="steward-db-read"
            )
        return await asyncio.wrap_future(self._readers.submit(self._run, self.read_engine, fn, args))

    @staticmethod
    def _run(source: Engine | Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if isinstance(source, Connection):
            with source.begin():
                return fn(source, *args)
        with source.begin() as conn:
            return fn(conn, *args)

    def dispose(self) -> None:
        self._stop.set()
        for pool in (self._writer, self._readers, self._checkpointer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer = self._readers = self._checkpointer = None
        for conn in self._held.values():
            conn.close()
        self._held.clear()
        self.engine.dispose()
        self.direct.dispose()


def _busy(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _checkpoint(engine: Engine) -> int:
    """A passive checkpoint; the bytes of pages in the WAL (0 if it failed)."""
    try:
        with engine.connect() as conn:
            # On the DB-API connection: through SQLAlchemy it would run inside a BEGIN, where SQLite
            # refuses to checkpoint ("database table is locked"). The page size too: this engine's BEGIN
            # is IMMEDIATE, which waited (up to busy_timeout) for a steady stream of writers to pause, and
            # meanwhile no checkpoint ran at all.
            raw = conn.connection.dbapi_connection
            _, wal_pages, _copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # type: ignore[union-attr]
            (page_size,) = raw.execute("PRAGMA page_size").fetchone()  # type: ignore[union-attr]
            return int(wal_pages) * int(page_size)
    except Exception as exc:  # nobody awaits this job; the next one tries again
        log.warning("db.checkpoint_failed", error=str(exc)[:200])
        return 0


def _thread_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA wal_autocheckpoint=0")  # never inside a commit: _SqliteThreads checkpoints
    cur.close()


def _direct_pragmas(dbapi_conn: Any, record: Any) -> None:
    _thread_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")  # on the event loop: never wait for another process's lock
    cur.close()


def _begin_here(conn: Any) -> None:
    # As the async engine's _begin, without its asyncio lock: _SqliteThreads.write holds it already.
    # On the DB-API connection, as Statement runs statements: exec_driver_sql cost 100 µs per BEGIN.
    sql = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
    try:
        conn.connection.dbapi_connection.execute(sql).close()
    except sqlite3.Error as exc:  # "database is locked" must reach write() as an OperationalError
        raise DBAPIError.instance(sql, (), exc, sqlite3.Error) from exc


async def write(
    sessions: async_sessionmaker[AsyncSession],
    fn: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``fn(conn, *args)`` in one write transaction on ``sessions``' database, committed when it returns
    (rolled back if it raises); its return value. ``fn`` is synchronous and may run on another thread:
    it must not touch the event loop, and should keep to Core statements (built once, with bind
    parameters: building and compiling a statement costs more than SQLite running it)."""
    engine: AsyncEngine = sessions.kw["bind"]
    threads = _THREADS.get(engine.sync_engine.dialect)
    if threads is not None:
        return await threads.write(_call(fn, kwargs), *args)
    async with engine.begin() as conn:
        return await conn.run_sync(fn, *args, **kwargs)


async def read(
    sessions: async_sessionmaker[AsyncSession],
    fn: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """As :func:`write`, in a read-only transaction (a write in it raises :class:`ReadOnlySessionError`)."""
    engine: AsyncEngine = sessions.kw["bind"]
    threads = _THREADS.get(engine.sync_engine.dialect)
    if threads is not None:
        return await threads.read(_call(fn, kwargs), *args)
    async with engine.execution_options(**{READ_ONLY: True}).begin() as conn:
        return await conn.run_sync(fn, *args, **kwargs)


class ThreadWriter:
    """Hands whole transactions to a SQLite file's writer thread while holding this instance's write lock
    (:func:`writes_on_thread`). The thread runs them in the order given, each committed on its own, one
    right after the other: it need not wait for the event loop in between."""

    def __init__(self, threads: _SqliteThreads) -> None:
        self._threads = threads
        self._last: concurrent.futures.Future[Any] | None = None

    def submit(self, fn: Callable[[Connection, *Ts], T], *args: *Ts) -> asyncio.Future[T]:
        """``fn(conn, *args)`` in a write transaction of its own on the writer thread; its result."""
        job = self._threads._submit_write(self._threads._write, self._threads.engine, fn, args)
        self._last = job
        return asyncio.wrap_future(job)

    @property
    def contended(self) -> bool:
        """Another writer of this instance waits for the write lock: hand over no more."""
        return self._threads.write_lock.waiting > 0


@contextlib.asynccontextmanager
async def writes_on_thread(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[ThreadWriter | None]:
    """This instance's write lock, for transactions handed to the writer thread of ``sessions``' SQLite
    file (:class:`ThreadWriter`); None elsewhere (PostgreSQL, an in-memory SQLite), where the caller
    uses a session. The lock goes back once the last transaction handed over has ended, even if the
    body was cancelled before it had."""
    threads = _THREADS.get(sessions.kw["bind"].sync_engine.dialect)
    if threads is None:
        yield None
        return
    await threads.write_lock.take()
    writer = ThreadWriter(threads)
    try:
        yield writer
    finally:
        last = writer._last  # the thread runs them in order: the last one ends last
        if last is None:
            threads.give_back()
        else:
            threads.give_back_after(last)


def _call(fn: Callable[..., T], kwargs: dict[str, Any]) -> Callable[..., T]:
    if not kwargs:
        return fn
    return lambda conn, *args: fn(conn, *args, **kwargs)


class Statement:
    """A Core statement that runs with little per-call overhead: the short transactions of a command's
    round trip (:mod:`cloud.command_store`) are a handful of statements that SQLite runs in some 40 µs
    each, while ``Connection.execute`` took about 200 µs apiece here to set up its execution context.

    On a SQLite DB-API connection the statement is compiled once, by SQLAlchemy for that dialect, and
    run on the DB-API connection with the column types' own bind and result processors (what
    ``Connection.execute`` would bind and return). Anywhere else (PostgreSQL, aiosqlite's adapter)
    it goes through ``Connection.execute``. Rows come back as dicts keyed by column key. Every bind
    without a value of its own must be given: no Python-side column defaults are applied."""

    def __init__(self, statement: Any, column_keys: list[str] | None = None) -> None:
        """``column_keys``: of an INSERT, the columns it sets (by default every column of the table)."""
        self.statement = statement
        self.column_keys = column_keys
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def execute(self, conn: Connection, params: dict[str, Any]) -> None:
        self._run(conn, params, fetch=False)

    def first(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any] | None:
        rows = self._run(conn, params, fetch=True)
        return rows[0] if rows else None

    def all(self, conn: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._run(conn, params, fetch=True)

    def _run(self, conn: Connection, params: dict[str, Any], *, fetch: bool) -> list[dict[str, Any]]:
        raw = conn.connection.dbapi_connection if isinstance(conn, Connection) else None
        if not isinstance(raw, sqlite3.Connection):  # also an ORM Session's run_sync
            result = conn.execute(self.statement, params)
            return [dict(row._mapping) for row in result] if fetch else []
        compiled = self._compiled.get(conn.dialect)
        if compiled is None:
            compiled = self._compiled[conn.dialect] = _Compiled(
                self.statement, self.column_keys, conn.dialect
            )
        if compiled.writes and conn.get_execution_options().get(READ_ONLY):
            raise ReadOnlySessionError(f"write in a read-only session: {compiled.sql[:80]!r}")
        values = compiled.values(params)
        try:
            cursor = raw.execute(compiled.sql, values)
            try:
                rows = cursor.fetchall() if fetch else []
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            # As Connection.execute raises it: IntegrityError, OperationalError... with the SQL.
            raise DBAPIError.instance(compiled.sql, values, exc, sqlite3.Error) from exc
        return [compiled.row(r) for r in rows]


class _Compiled:
    """:class:`Statement` compiled for one dialect: its SQL, binds in order, result columns."""

    def __init__(self, statement: Any, column_keys: list[str] | None, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        self.sql: str = compiled.string
        self.writes = bool(compiled.isinsert or compiled.isupdate or compiled.isdelete)
        binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            fixed = None if bind.required else bind.effective_value
            binds.append(
                (name, bind.required, fixed, bind.type.dialect_impl(dialect).bind_processor(dialect))
            )
        self.binds = binds
        columns = getattr(statement, "exported_columns", ())
        self.keys = [c.key for c in columns]
        self.results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]

    def values(self, params: dict[str, Any]) -> list[Any]:
        out = []
        for name, required, fixed, process in self.binds:
            if required:
                try:
                    value = params[name]
                except KeyError:
                    raise InvalidRequestError(f"a value is required for bind parameter {name!r}") from None
            else:
                value = params.get(name, fixed)
            out.append(value if process is None else process(value))
        return out

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        return {
            key: value if process is None else process(value)
            for key, process, value in zip(self.keys, self.results, values, strict=True)
        }


def _rollback_before_close(dbapi_conn: Any) -> None:
    """Roll back on the connection's own worker thread before it is closed.

    A writer cancelled mid-statement (an instance shutting down, a request timing out) makes SQLAlchemy
    invalidate the connection instead of rolling it back, and close it with the cancelled statement's
    cursor still alive in the exception's traceback. ``sqlite3_close_v2`` then leaves a "zombie" that
    keeps the transaction, and with it the database's write lock, until the garbage collector frees that
    cursor: every other writer, in this process or another, got "database is locked". Queued here, not
    awaited: the caller may itself be cancelled, and the worker runs this before the close queued after
    it (ROLLBACK is allowed with statements pending; on no transaction it does nothing)."""
    worker = getattr(dbapi_conn, "_connection", None)  # aiosqlite.Connection
    raw = getattr(worker, "_connection", None)  # its sqlite3.Connection, None once closed
    queue = getattr(worker, "_tx", None)
    if raw is None or queue is None:
        return
    queue.put_nowait((None, raw.rollback))


class _WriteLock:
    """One SQLite engine's write lock, held from before ``BEGIN IMMEDIATE`` until the connection goes back
    to the pool (an ORM session gives it back at commit or rollback). The holder is recorded in the
    pooled connection's ``info``, so a connection that begins again before it is returned does not wait
    for itself."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0  # writers in _acquire: waiting for the lock, or about to take it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def acquire(self, info: dict[str, Any]) -> bool:
        """Called inside SQLAlchemy's greenlet; False if this connection holds it already, or if there
        is no event loop to wait on (then SQLite's own busy_timeout is the only queue)."""
        if info.get(_HOLDS_WRITE_LOCK):
            return False
        try:
            await_only(self._acquire())
        except MissingGreenlet:
            return False
        info[_HOLDS_WRITE_LOCK] = True
        return True

    async def _acquire(self) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self.waiting += 1
        try:
            async with asyncio.timeout(WRITE_LOCK_TIMEOUT_S):
                await self._lock.acquire()
        except TimeoutError:
            raise OperationalError(
                "BEGIN IMMEDIATE",
                None,
                sqlite3.OperationalError(
                    f"database is locked: no write lock within {WRITE_LOCK_TIMEOUT_S:g} s"
                ),
            ) from None
        finally:
            self.waiting -= 1

    async def take(self) -> None:
        """For a writer outside the pool (:class:`_SqliteThreads`); :meth:`give_back` ends it."""
        await self._acquire()

    def release(self, info: dict[str, Any]) -> None:
        if info.pop(_HOLDS_WRITE_LOCK, False):
            self.give_back()

    def give_back(self) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            # A connection cleaned up by the garbage collector, or a transaction ending on its own
            # thread (_SqliteThreads), off the loop's thread.
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to wait
                loop.call_soon_threadsafe(self._lock.release)
        else:
            self._lock.release()


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that may write (on SQLite: ``BEGIN IMMEDIATE``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def make_read_sessions(
    bind: AsyncEngine | async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads only, on the same pool as ``bind`` (an engine, or the sessionmaker from
    :func:`make_sessions`). On SQLite their transactions start with a deferred ``BEGIN``."""
    engine = bind if isinstance(bind, AsyncEngine) else bind.kw["bind"]
    return async_sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine, settings: CloudSettings, revision: str = "heads") -> None:
    """``alembic upgrade heads`` on the app's own engine (async, via ``run_sync``).

    ``heads``: each cloud feature keeps its own migration branch off the initial schema.
    """
    if settings.is_postgres and settings.database_schema:
        from sqlalchemy import text

        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database_schema}"'))

    def _run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)
    log.info("db.migrated", revision=revision, dialect=engine.dialect.name)
