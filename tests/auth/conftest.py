"""Fixtures for account tests: an embedded (anonymous) broker for the cloud, SQLite per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cloud.support import embedded_broker


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    async with embedded_broker() as port:
        yield port


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
