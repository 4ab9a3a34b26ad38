"""``Annotated`` dependencies: the services the lifespan built, and a session per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.commands import CommandService
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


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency on a worker thread, a hand-off per request.
    services: Services = request.app.state.services
    return services


async def get_session(services: Annotated[Services, Depends(get_services)]) -> AsyncIterator[AsyncSession]:
    async with services.sessions() as session:
        yield session


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
