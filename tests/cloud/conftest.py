"""Fixtures for cloud tests: an embedded amqtt broker per test, SQLite always, PostgreSQL if reachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cloud.support import embedded_broker, reachable

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    async with embedded_broker() as port:
        yield port


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"


def pg_available() -> bool:
    return reachable("127.0.0.1", 5432)


requires_pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL not reachable on 127.0.0.1:5432")
requires_mosquitto = pytest.mark.skipif(
    not reachable("127.0.0.1", 1883), reason="Mosquitto not reachable on 127.0.0.1:1883"
)
