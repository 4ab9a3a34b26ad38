"""cloud/db.py on SQLite: a writer cancelled at any point must not leave the database's write lock held;
whole transactions through ``db.write``/``db.read`` run off the event loop, take turns with the async
sessions' writers, never block the loop while another process holds SQLite's lock, and behave the same on
an in-memory database."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cloud import CloudSettings, db
from cloud.db import ReadOnlySessionError, make_engine, make_sessions


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """A long-running cloud may go a long time between collections; the tests must not be rescued by one."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def write_lock_free(path: Path) -> bool:
    """Can another process's connection take the write lock now (well within SQLite's busy timeout)?"""
    with contextlib.closing(sqlite3.connect(path, timeout=0.2, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True


async def writer(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    while True:
        async with sessions() as session, session.begin():
            await session.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": n})
            # A read with its cursor still open when the cancellation lands mid-transaction.
            await session.execute(text("SELECT v FROM t"))
            await session.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": n})


async def test_writers_cancelled_at_random_points_leave_the_write_lock_free(tmp_path: Path) -> None:
    """Regression: an instance shut down while ingest and the work-order timer wrote left a "zombie"
    connection holding the write lock until the garbage collector ran, and the next instance's
    migrations failed with "database is locked" after 30 s. The cancelled tasks' tracebacks are kept
    (with the collector off), as a real shutdown's exception chains keep them."""
    rng = random.Random(7)
    kept: list[object] = []
    with collector_off():
        for trial in range(30):
            path = tmp_path / f"{trial}.db"
            engine = make_engine(CloudSettings(database_url=f"sqlite+aiosqlite:///{path}"))
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (v INTEGER)"))
            sessions = make_sessions(engine)
            tasks = [asyncio.create_task(writer(sessions, i)) for i in range(3)]
            await asyncio.sleep(rng.random() * 0.02)
            for task in tasks:
                task.cancel()
            kept += await asyncio.gather(*tasks, return_exceptions=True)
            await engine.dispose()
            assert await asyncio.to_thread(write_lock_free, path), f"write lock still held (trial {trial})"
            # The same engine stays usable too: a new writer gets the lock at once.
            engine = make_engine(CloudSettings(database_url=f"sqlite+aiosqlite:///{path}"))
            try:
                async with asyncio.timeout(5), make_sessions(engine)() as session, session.begin():
                    await session.execute(text("INSERT INTO t (v) VALUES (99)"))
            finally:
                await engine.dispose()
    assert all(isinstance(e, asyncio.CancelledError) for e in kept)


@contextlib.asynccontextmanager
async def table_t(url: str) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    """An engine on ``url`` with a table ``t (v INTEGER)``, disposed at the end."""
    engine = make_engine(CloudSettings(database_url=url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v INTEGER)"))
        yield engine, make_sessions(engine)
    finally:
        await engine.dispose()


def _insert(conn: Connection, v: int, *, fail: bool = False) -> int:
    conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
    if fail:
        raise ValueError("refused after the insert")
    return threading.get_ident()


def _slow_insert(conn: Connection, v: int) -> int:
    time.sleep(0.3)
    return _insert(conn, v)


def _values(conn: Connection) -> list[int]:
    return list(conn.execute(text("SELECT v FROM t ORDER BY rowid")).scalars())


@pytest.mark.parametrize("where", ["file", "memory"])
async def test_write_and_read_run_whole_transactions(tmp_path: Path, where: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}" if where == "file" else "sqlite+aiosqlite:///:memory:"
    async with table_t(url) as (_engine, sessions):
        await db.write(sessions, _insert, 1)
        with pytest.raises(ValueError, match="refused"):
            await db.write(sessions, _insert, 2, fail=True)
        assert await db.read(sessions, _values) == [1]  # the failed one rolled back
        with pytest.raises(ReadOnlySessionError):
            await db.read(sessions, _insert, 3)
        assert await db.read(sessions, _values) == [1]


async def test_write_waits_for_an_async_writer_and_for_another_process_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with table_t(f"sqlite+aiosqlite:///{path}") as (engine, sessions):
        # An async session holds the write lock: db.write queues behind it (no "database is locked"
        # from SQLite's busy handler) and commits after it.
        async with sessions() as session, session.begin():
            await session.execute(text("INSERT INTO t (v) VALUES (1)"))
            queued = asyncio.create_task(db.write(sessions, _insert, 2))
            await asyncio.sleep(0.1)
            assert not queued.done()
        await asyncio.wait_for(queued, 5)
        assert await db.read(sessions, _values) == [1, 2]

        # Another process holds SQLite's write lock: the write waits for it on a thread while the loop
        # keeps running; its caller, cancelled meanwhile, does not give this instance's lock back before
        # the transaction has ended, so the next writer neither fails nor interleaves.
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (v) VALUES (3)")
        waiting = asyncio.create_task(db.write(sessions, _insert, 4))
        gaps, last = [], time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        assert max(gaps) < 0.1, f"the loop stalled for {max(gaps):.3f} s"
        assert not waiting.done()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        lock = db._THREADS[engine.sync_engine.dialect].write_lock._lock
        assert lock.locked()  # the transaction is still waiting to run: giving the lock back would be a lie
        after = asyncio.create_task(db.write(sessions, _insert, 5))
        await asyncio.sleep(0.05)
        assert not after.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(after, 5)
        assert await db.read(sessions, _values) == [1, 2, 3, 4, 5]
        assert not lock.locked()


async def test_transactions_handed_to_the_writer_thread_run_in_order_in_turn_with_the_other_writers(
    tmp_path: Path,
) -> None:
    """Long transactions (ingest's group commits) go to the writer thread, never the loop's, while the
    write lock is held: they queue behind an async session's writer like any writer of this instance,
    run in the order handed over, a failed one rolls back alone, and the lock goes back only when the
    last has ended. A writer waiting meanwhile shows as ``contended``."""
    async with table_t(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as (engine, sessions):
        write_lock = db._THREADS[engine.sync_engine.dialect].write_lock

        async def hand_over() -> list[int | BaseException]:
            async with db.writes_on_thread(sessions) as writer:
                assert writer is not None
                jobs = [writer.submit(_insert, 2), writer.submit(functools.partial(_insert, fail=True), 3)]
                jobs.append(writer.submit(_slow_insert, 4))
                assert not writer.contended
                waiting = asyncio.create_task(db.write(sessions, _insert, 5))
                await asyncio.sleep(0.05)
                assert writer.contended and not waiting.done()
            await asyncio.sleep(0.1)
            # Not given back yet, the slow one still running: the other writer still waits for it.
            assert write_lock.waiting == 1 and not waiting.done()
            results = await asyncio.gather(*jobs, return_exceptions=True)
            await asyncio.wait_for(waiting, 5)
            return results

        async with sessions() as session, session.begin():
            await session.execute(text("INSERT INTO t (v) VALUES (1)"))
            queued = asyncio.create_task(hand_over())
            await asyncio.sleep(0.1)
            assert not queued.done()
        two, three, four = await asyncio.wait_for(queued, 5)
        assert two == four != threading.get_ident()
        assert isinstance(three, ValueError)
        assert await db.read(sessions, _values) == [1, 2, 4, 5]
        assert not write_lock._lock.locked()


async def test_no_writer_thread_for_an_in_memory_database() -> None:
    async with (
        table_t("sqlite+aiosqlite:///:memory:") as (_engine, sessions),
        db.writes_on_thread(sessions) as writer,
    ):
        assert writer is None


@pytest.mark.parametrize("pauses", [True, False], ids=["writes-pause", "writes-never-pause"])
async def test_checkpoints_run_beside_the_writers_and_the_wal_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pauses: bool
) -> None:
    """No commit checkpoints (a checkpoint inside a commit held the write lock while a command waited);
    every CHECKPOINT_INTERVAL_S a passive one runs on a thread of its own. When writes pause it copies
    the whole WAL back and the WAL starts afresh; when they never do, the WAL grows only to
    WAL_LIMIT_BYTES, where one runs under the write lock to completion."""
    monkeypatch.setattr(db, "CHECKPOINT_INTERVAL_S", 0.01)
    monkeypatch.setattr(db, "WAL_LIMIT_BYTES", 10**12 if pauses else 256 * 1024)
    path = tmp_path / "c.db"
    async with table_t(f"sqlite+aiosqlite:///{path}") as (engine, sessions):
        threads = db._THREADS[engine.sync_engine.dialect]
        for each in (threads.engine, threads.direct):
            with each.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        wal = path.with_name("c.db-wal")
        sizes = []
        for _ in range(3):
            for i in range(1200):
                await db.write(sessions, _insert, i)
                if pauses and i % 100 == 99:
                    await asyncio.sleep(0.05)  # the passive checkpoint copies all back meanwhile
            sizes.append(wal.stat().st_size)
        assert len(await db.read(sessions, _values)) == 3600
    # Without checkpoints every commit appends at least one page (4 KiB and a frame header): the file
    # would reach ~15 MB (14.9 MB measured with checkpoints disabled). It keeps its high-water mark,
    # which is the limit plus what commits before the checkpointer thread gets its turn: 0.4 to 2.2 MB
    # over a 256 KiB limit on a quiet fast machine. One run in about ten reached 14.9 MB: the
    # checkpointer's first look asked the page size in a write transaction and waited behind the writers
    # (the next test); since it does not, 60 runs in a row stayed under 1.1 MB.
    assert max(sizes) < 11 * 1024 * 1024, sizes
    assert sizes[2] - sizes[1] < 4 * 1024 * 1024, sizes  # the last round does not grow as if unchecked


async def test_the_checkpointer_never_waits_for_the_write_lock(tmp_path: Path) -> None:
    """A passive checkpoint needs no lock a writer holds: while another connection holds SQLite's write
    lock, the checkpointer thread's look at the WAL ends at once. It waited out busy_timeout (30 s) for
    the write lock once, to learn the page size, while the WAL grew unchecked."""
    path = tmp_path / "c.db"
    async with table_t(f"sqlite+aiosqlite:///{path}") as (engine, sessions):
        for i in range(50):
            await db.write(sessions, _insert, i)
        threads = db._THREADS[engine.sync_engine.dialect]
        threads.dispose()  # its own checkpointer stopped: this test runs one look by hand
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO t (v) VALUES (-1)")
            threads._stop.clear()
            threads._dirty = True
            assert threads._checkpointing.acquire(blocking=False)
            started = time.monotonic()
            await asyncio.wait_for(asyncio.to_thread(threads._checkpoints), 5)
            assert time.monotonic() - started < 2
            assert not threads._checkpointing.locked()
        finally:
            writer.rollback()
            writer.close()


@contextlib.contextmanager
def both_ways(tmp_path: Path) -> Iterator[tuple[Connection, Connection]]:
    """Transactions on two SQLite files with the cloud's schema: one for db.Statement, one for
    Connection.execute."""
    from sqlalchemy import create_engine

    from cloud.tables import Base

    engines = [create_engine(f"sqlite:///{tmp_path / name}.db") for name in ("lean", "core")]
    try:
        for engine in engines:
            Base.metadata.create_all(engine)
        with engines[0].begin() as lean, engines[1].begin() as core:
            yield lean, core
    finally:
        for engine in engines:
            engine.dispose()


def test_a_statement_binds_and_returns_what_connection_execute_does(tmp_path: Path) -> None:
    """The short transactions of a command's round trip run their statements on SQLite's DB-API connection
    (db.Statement): what they store and what they read back must be what SQLAlchemy's own execution
    stores and returns, times (aware UTC in, aware UTC out), JSON and NULLs included."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import bindparam, select, update

    from cloud.tables import CommandRow

    table = CommandRow.__table__
    c = table.c
    issued = datetime(2026, 11, 23, 22, 0, 1, 250000, tzinfo=timezone(timedelta(hours=8)))
    row = {
        "id": "cmd-1",
        "device_id": "gate-1",
        "gateway_id": "gw-1",
        "site_id": "estate-a",
        "action": "open",
        "args": {"hold_s": 5, "note": "访客"},
        "status": "sent",
        "reason": None,
        "result_reason": None,
        "result_state": None,
        "issued_by": "op",
        "issued_at": issued,
        "expires_at": issued + timedelta(seconds=30),
        "updated_at": issued,
    }
    advance = (
        update(table)
        .where(c.id == bindparam("b_id"))
        .values(status=bindparam("b_status"), result_state=bindparam("b_state", type_=c.result_state.type))
        .returning(*c)
    )
    get = select(*c).where(c.id == bindparam("b_id"))
    with both_ways(tmp_path) as (lean, core):
        db.Statement(table.insert()).execute(lean, row)
        core.execute(table.insert(), row)
        moved = {"b_id": "cmd-1", "b_status": "succeeded", "b_state": {"state": "open", "loop": False}}
        got = db.Statement(advance).first(lean, moved)
        assert got == dict(core.execute(advance, moved).one()._mapping)
        assert got is not None and got["issued_at"] == issued and got["issued_at"].tzinfo is UTC
        assert got["result_state"] == {"state": "open", "loop": False} and got["reason"] is None
        want = dict(core.execute(get, {"b_id": "cmd-1"}).one()._mapping)
        assert db.Statement(get).all(lean, {"b_id": "cmd-1"}) == [want]
        assert db.Statement(get).first(lean, {"b_id": "nope"}) is None
        dump = "SELECT * FROM commands"  # stored alike, value for value
        assert lean.exec_driver_sql(dump).all() == core.exec_driver_sql(dump).all()


def test_a_statement_fails_as_connection_execute_would(tmp_path: Path) -> None:
    from sqlalchemy import bindparam, select
    from sqlalchemy.exc import IntegrityError, InvalidRequestError

    from cloud.tables import Site

    insert = db.Statement(Site.__table__.insert(), ["id", "name", "created_at", "updated_at"])
    with both_ways(tmp_path) as (lean, _core):
        with pytest.raises(InvalidRequestError, match="'created_at'"):
            insert.execute(lean, {"id": "estate-a", "name": None})
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        insert.execute(lean, {"id": "estate-a", "name": None, "created_at": now, "updated_at": now})
        with pytest.raises(IntegrityError, match="UNIQUE"):
            insert.execute(lean, {"id": "estate-a", "name": None, "created_at": now, "updated_at": now})
        read_only = lean.execution_options(**{db.READ_ONLY: True})
        with pytest.raises(ReadOnlySessionError):
            insert.execute(read_only, {"id": "estate-b", "name": None, "created_at": now, "updated_at": now})
        get = db.Statement(select(Site.id).where(Site.id == bindparam("b_id")))
        assert get.first(read_only, {"b_id": "estate-a"}) == {"id": "estate-a"}
        assert lean.exec_driver_sql("SELECT count(*) FROM sites").scalar() == 1
