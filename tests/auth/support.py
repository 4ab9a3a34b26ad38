"""The cloud app served by uvicorn on a real port, with its app object at hand (to move the auth
clock), plus account helpers that go through the real CLI-side code and the real login endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn
from fastapi import FastAPI

from cloud import CloudSettings, create_app
from cloud.auth import Role, create_user
from cloud.auth.service import AuthService


class Clock:
    """A clock tests move by hand: ``clock.advance(seconds)``."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class App:
    app: FastAPI
    settings: CloudSettings
    http: httpx.AsyncClient  # no credentials: each test says who it is

    @property
    def auth(self) -> AuthService:
        service: AuthService = self.app.state.services.extras["auth"]
        return service

    async def user(self, username: str, role: Role, sites: Sequence[str] = ()) -> dict[str, str]:
        """Create the account, log in over HTTP; the Authorization header to send as them."""
        password = await create_user(self.settings, username, f"pw-{username}-0123456789", role, sites)
        return await self.login_headers(username, password)

    async def login_headers(self, username: str, password: str) -> dict[str, str]:
        resp = await self.http.post("/api/v1/auth/login", json={"username": username, "password": password})
        assert resp.status_code == 200, resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}


@contextlib.asynccontextmanager
async def served(settings: CloudSettings) -> AsyncIterator[App]:
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve(), name="cloud-http")
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("cloud stopped during start-up")
                await asyncio.sleep(0.02)
            await app.state.services.ingest.ready.wait()
        base = f"http://{settings.http_host}:{settings.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield App(app, settings, http)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
