"""Alembic environment, async. The app passes its own connection in ``config.attributes``;
from the command line set ``STEWARD_CLOUD_DATABASE_URL`` and run
``alembic -c cloud/migrations/alembic.ini upgrade head``."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from cloud.features import load_features
from cloud.tables import Base

load_features()  # feature tables join Base.metadata, so autogenerate does not drop them

target_metadata = Base.metadata


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    from cloud.db import make_engine
    from cloud.settings import CloudSettings

    engine = make_engine(CloudSettings.from_env())
    async with engine.begin() as conn:
        await conn.run_sync(_migrate)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _migrate(connection)
else:
    asyncio.run(_online())
