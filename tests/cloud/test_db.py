"""cloud/db.py on SQLite: a writer cancelled at any point must not leave the database's write lock held."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import CloudSettings
from cloud.db import make_engine, make_sessions


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
