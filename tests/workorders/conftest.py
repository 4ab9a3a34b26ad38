"""Fixtures: a migrated database per test (SQLite always, PostgreSQL when reachable) and a clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.workorders.support import Clock, Db, database, skip_without_pg


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    async with database("sqlite", tmp_path) as d:
        yield d


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    skip_without_pg(request.param)
    async with database(request.param, tmp_path) as d:
        yield d


@pytest.fixture
async def pg_db(tmp_path: Path) -> AsyncIterator[Db]:
    skip_without_pg("postgresql")
    async with database("postgresql", tmp_path) as d:
        yield d
