"""Real things for work order tests: migrated SQLite/PostgreSQL databases, an injected clock, the app
over ASGI with its lifespan, a real HTTP webhook receiver, and ingest exactly as the cloud does it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import CloudSettings, create_app
from cloud.db import make_engine, make_sessions, upgrade
from cloud.store import ingest_batch
from cloud.workorders import MaintenancePlan, WorkOrderService, WorkOrderSettings
from protocol import Event, Location, new_id
from tests.cloud.conftest import PG_URL, pg_available
from tests.cloud.support import free_port, make_batch

SITE, GATEWAY = "oak-garden", "gw-1"
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai


NO_PLAN = MaintenancePlan()


class Clock:
    """The injected clock: tests move it; nothing sleeps."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, now: datetime) -> datetime:
        self.now = now
        return now


@dataclass
class Db:
    settings: CloudSettings
    sessions: async_sessionmaker[AsyncSession]


@contextlib.asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    """A freshly migrated database (``alembic upgrade heads``); PostgreSQL in its own schema."""
    if kind == "postgresql":
        schema = f"wo_{new_id().lower()}"
        settings = CloudSettings(database_url=PG_URL, database_schema=schema, broker_port=free_port())
    else:
        settings = CloudSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / f'cloud-{new_id()[-6:]}.db'}",
            broker_port=free_port(),
        )
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        yield Db(settings, make_sessions(engine))
    finally:
        if settings.database_schema:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE'))
        await engine.dispose()


def skip_without_pg(kind: str) -> None:
    import pytest

    if kind == "postgresql" and not pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432 (trust auth, database 'test')")


def service(
    db: Db,
    clock: Clock,
    instance: str = "cloud-a",
    *,
    plan: MaintenancePlan | None = NO_PLAN,
    **settings: Any,
) -> WorkOrderService:
    """A service on the shipped config/rules.yaml; no planned maintenance unless ``plan=None`` (the
    shipped config/maintenance.yaml) or a plan is given."""
    return WorkOrderService(
        db.sessions,
        WorkOrderSettings.from_cloud(environ={}, **settings),
        instance=instance,
        clock=clock,
        plan=plan,
    )


def event(
    device: str, type_: str, data: dict[str, Any] | None = None, *, at: datetime, **location: str
) -> Event:
    return Event(
        id=new_id(),
        seq=0,
        device_id=device,
        type=type_,
        ts=at,
        received_at=at,
        data=data or {},
        location=Location(**location) if location else None,
    )


async def ingest(
    db: Db, svc: WorkOrderService, *events: Event, site: str = SITE, gateway: str = GATEWAY
) -> None:
    """What cloud/ingest.py does with a batch: store it in one transaction, then call the listeners."""
    batch = make_batch(list(events), site=site, gateway=gateway)
    async with db.sessions() as session, session.begin():
        outcome = await ingest_batch(session, batch, svc.clock())
    await svc.on_events(batch, outcome.new_events)


@contextlib.asynccontextmanager
async def running_app(
    db: Db, clock: Clock, **env: str
) -> AsyncIterator[tuple[httpx.AsyncClient, WorkOrderService]]:
    """The real cloud app (all features, lifespan and all) over ASGI, its work orders on ``clock``.

    No broker runs: ingest keeps retrying in the background, which these tests do not need. The timer
    loop's first tick is a minute away: tests tick themselves.
    No planned maintenance unless ``STEWARD_CLOUD_MAINTENANCE_FILE`` is given.
    """
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(
        {"STEWARD_CLOUD_WORKORDER_TICK_S": "60", "STEWARD_CLOUD_MAINTENANCE_FILE": os.devnull, **env}
    )
    try:
        app = create_app(db.settings.model_copy(update={"run_migrations": True}))
        async with app.router.lifespan_context(app):
            svc: WorkOrderService = app.state.services.extras["workorders"]
            svc.clock = clock
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cloud", timeout=10) as http:
                http.headers.update(await login(http, db.settings))
                yield http, svc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.pop("STEWARD_CLOUD_WORKORDER_TICK_S", None)
        os.environ.pop("STEWARD_CLOUD_MAINTENANCE_FILE", None)


async def login(http: httpx.AsyncClient, settings: CloudSettings) -> dict[str, str]:
    """An operations-centre admin's Authorization header, when cloud/auth is installed (it gates /api/v1)."""
    try:
        from cloud.auth import Role, create_user
    except ModuleNotFoundError:
        return {}
    password = "pw-work-orders-0123456789"
    await create_user(settings, "wo-admin", password, Role.ADMIN, replace=True)
    r = await http.post("/api/v1/auth/login", json={"username": "wo-admin", "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@dataclass
class Receiver:
    """A real HTTP webhook receiver on a loopback port that fails its first ``fail_first`` requests."""

    fail_first: int = 0
    port: int = field(default_factory=free_port)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/steward"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/steward")
        async def hook(request: Request) -> Response:
            self.requests.append((dict(request.headers), await request.body()))
            if len(self.requests) <= self.fail_first:
                return Response("busy", status_code=503)
            return Response(status_code=204)

        return app


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    server = uvicorn.Server(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=receiver.port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield receiver
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
