"""``Annotated`` dependencies: the services the lifespan built, and a read-only session per request.

Routes that write go through a service; a GET takes :data:`ReadSessionDep`. On SQLite a write session's
``BEGIN IMMEDIATE`` made every console read queue behind ingest and commands for the write lock, and
wait out ``busy_timeout`` while another process wrote; a read session's deferred ``BEGIN`` never waits
under WAL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.commands import CommandService
from cloud.db import make_read_sessions
from cloud.hub import Hub
from cloud.ingest import Ingest
from cloud.metrics import Metrics
from cloud.settings import CloudSettings


@dataclass(slots=True)
class Services:
    settings: CloudSettings
    sessions: async_sessionmaker[AsyncSession]
    hub: Hub
    metrics: Metrics
    commands: CommandService
    ingest: Ingest
    # What cloud features (cloud/features.py) set up for themselves, by feature name.
    extras: dict[str, Any] = field(default_factory=dict)
    read_sessions: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.read_sessions = make_read_sessions(self.sessions)


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency on a worker thread, a hand-off per request.
    services: Services = request.app.state.services
    return services


async def get_read_session(
    services: Annotated[Services, Depends(get_services)],
) -> AsyncIterator[AsyncSession]:
    async with services.read_sessions() as session:
        yield session


ServicesDep = Annotated[Services, Depends(get_services)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
