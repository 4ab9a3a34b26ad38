"""Fixtures for every test package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from protocol import new_id
from tests.cloud.conftest import PG_URL, pg_available
from tests.stack import CloudDb


@pytest.fixture(params=["sqlite", "postgresql"])
async def cloud_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudDb]:
    """Where the cloud stores, once per database: a SQLite file; a fresh PostgreSQL schema, dropped after
    (skipped, saying so, where PostgreSQL is not running)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}", {}
        return
    if not pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    schema = f"t_{new_id().lower()}"
    try:
        yield PG_URL, {"database_schema": schema}
    finally:
        engine = create_async_engine(PG_URL)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            await engine.dispose()
