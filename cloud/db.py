"""Engine, sessions and migrations. The engine is made in the app's lifespan, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cloud.settings import CloudSettings

log = structlog.get_logger("steward.cloud.db")
MIGRATIONS = Path(__file__).with_name("migrations")


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

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Take the write lock at BEGIN: a deferred transaction that reads and then writes while
            # another commits fails (or stalls) on upgrading its stale snapshot under WAL.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


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
