"""Fixtures for cloud tests: an embedded amqtt broker per test, SQLite always, PostgreSQL if reachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import CloudSettings
from cloud.db import make_engine, make_sessions, upgrade
from protocol import new_id
from tests.cloud.support import embedded_broker, reachable

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    async with embedded_broker() as port:
        yield port


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def sessions(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A migrated store, once on a SQLite file and once in a fresh PostgreSQL schema (dropped after)."""
    if request.param == "postgresql":
        if not pg_available():
            pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
        schema = f"t_{new_id().lower()}"
        settings = CloudSettings(database_url=PG_URL, database_schema=schema)
    else:
        settings = CloudSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        yield make_sessions(engine)
    finally:
        if settings.database_schema:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{settings.database_schema}" CASCADE'))
        await engine.dispose()


def pg_available() -> bool:
    return reachable("127.0.0.1", 5432)


requires_pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL not reachable on 127.0.0.1:5432")
requires_mosquitto = pytest.mark.skipif(
    not reachable("127.0.0.1", 1883), reason="Mosquitto not reachable on 127.0.0.1:1883"
)
