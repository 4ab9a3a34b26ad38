"""An estate on real sockets whose parts can fail one at a time: broker, cloud, gateway, the gateway's link.

``Estate`` owns a TaskGroup. The cloud (FastAPI + ingest, on a fixed HTTP port so it can come back) and
the gateway run as tasks that tests stop and start; the gateway reaches the broker through
:class:`LinkProxy`, so its uplink can be cut while it keeps running its doors. Devices (MQTT door
controllers, intercoms) talk to the broker directly, as they would on the estate's LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from steward.broker import EmbeddedBroker, free_port
from tests.stack import LinkProxy, site_config

SITE, GATEWAY = "oak-garden", "gw-1"
ADMIN = ("access-admin", "correct horse battery staple")


def mqtt_device(device_id: str, kind: str, **options: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": kind,
        "transport": {"type": "mqtt", "topic_base": f"estate/devices/{device_id}"},
        "options": options,
    }


async def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Estate:
    tmp_path: Path
    broker: EmbeddedBroker
    link: LinkProxy
    site: Any
    sims: dict[str, Any]
    tg: asyncio.TaskGroup
    http: httpx.AsyncClient
    settings: Any
    app: Any = None
    gateway: Any = None
    _server: Any = None
    _cloud_task: asyncio.Task[None] | None = None
    _gateway_task: asyncio.Task[None] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    # ---- cloud -------------------------------------------------------------------------------
    async def start_cloud(self) -> None:
        from cloud.app import create_app

        app = create_app(self.settings)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.settings.http_port, log_config=None, lifespan="on"
            )
        )
        self._cloud_task = self.tg.create_task(server.serve(), name="cloud")
        await until(lambda: server.started or self._cloud_task.done(), 20, "the cloud to listen")
        assert not self._cloud_task.done(), "the cloud did not start"
        self.app, self._server = app, server
        services = app.state.services
        async with asyncio.timeout(20):
            await services.ingest.ready.wait()
        await self._authorise(services)

    async def stop_cloud(self) -> None:
        """As on SIGTERM: uvicorn finishes, the lifespan closes ingest, MQTT and the engine."""
        task, self._cloud_task = self._cloud_task, None
        if task is not None:
            self._server.should_exit = True
            async with asyncio.timeout(20):
                await task
        self.app = None

    @property
    def access(self) -> Any:
        return self.app.state.services.extras["access"]

    async def _authorise(self, services: Any) -> None:
        """When the auth feature is installed, log in as an admin (created directly in the store)."""
        if "auth" not in services.extras:
            return
        from cloud.auth.permissions import Role
        from cloud.auth.service import upsert_user
        from protocol.models import utcnow

        async with services.sessions() as s, s.begin():
            await upsert_user(s, ADMIN[0], ADMIN[1], Role.ADMIN, [SITE], replace=True, now=utcnow())
        r = await self.http.post("/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert r.status_code == 200, r.text
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    # ---- gateway -----------------------------------------------------------------------------
    async def start_gateway(self) -> Any:
        from edge.gateway import Gateway

        self.gateway = Gateway(self.site)
        self._gateway_task = self.tg.create_task(self.gateway.run(), name="gateway")
        async with asyncio.timeout(20):
            await self.gateway.started.wait()
        return self.gateway

    async def stop_gateway(self) -> None:
        task, self._gateway_task = self._gateway_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        return self.gateway.access.store

    async def gateway_at(self, version: int, timeout: float = 10) -> None:
        await until(lambda: self.store.version == version, timeout, f"the gateway at version {version}")

    async def site_version(self) -> int:
        r = await self.http.get(f"/api/v1/sites/{SITE}/credential-sync")
        assert r.status_code == 200, r.text
        return int(r.json()["version"])

    async def events(self, type_: str, **params: Any) -> list[dict[str, Any]]:
        r = await self.http.get("/api/v1/events", params={"type": type_, "limit": 1000, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    async def wait_events(self, type_: str, n: int = 1, timeout: float = 10, **params: Any) -> list[Any]:
        async def enough() -> list[Any] | None:
            items = await self.events(type_, **params)
            return items if len(items) >= n else None

        return list(await until(enough, timeout, f"{n}x {type_} in the cloud", interval=0.1))


@contextlib.asynccontextmanager
async def estate(
    tmp_path: Path, devices: list[dict[str, Any]], *, gateway: bool = True, **site_extra: Any
) -> AsyncIterator[Estate]:
    from cloud.settings import CloudSettings
    from simulators.registry import run_site_simulators

    async with EmbeddedBroker(port=0) as broker:
        link = LinkProxy(broker.port)
        await link.start()
        site_extra.setdefault("access", {"unlock_s": 1.0})
        site = site_config(tmp_path, link.port, devices, device_broker_url=broker.url, **site_extra)
        settings = CloudSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
            broker_port=broker.port,
            http_port=free_port(),
            client_id="cloud-access-test",
            sweep_interval_s=0.2,
        )
        base = f"http://127.0.0.1:{settings.http_port}"
        try:
            async with (
                run_site_simulators(site) as sims,
                httpx.AsyncClient(base_url=base, timeout=15) as http,
                asyncio.TaskGroup() as tg,
            ):
                e = Estate(tmp_path, broker, link, site, sims, tg, http, settings)
                try:
                    await e.start_cloud()
                    if gateway:
                        await e.start_gateway()
                    yield e
                finally:
                    await e.stop_gateway()
                    await e.stop_cloud()
        finally:
            await link.cut()
