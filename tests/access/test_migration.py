"""The access migration creates exactly what the tables declare (so autogenerate has nothing to add)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from cloud.access import tables
from cloud.db import make_engine, upgrade
from cloud.settings import CloudSettings

ACCESS_TABLES = {"access_sites", "access_credentials", "access_changes", "access_gateway_sync"}


async def test_upgrade_heads_creates_the_access_tables_as_declared(tmp_path: Path) -> None:
    settings = CloudSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)

        def check(conn: Connection) -> list[object]:
            assert set(inspect(conn).get_table_names()) >= ACCESS_TABLES
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, tables.AccessSite.metadata)
            return [d for d in diffs if any(name in repr(d) for name in ACCESS_TABLES)]

        async with engine.connect() as conn:
            assert await conn.run_sync(check) == []
    finally:
        await engine.dispose()
