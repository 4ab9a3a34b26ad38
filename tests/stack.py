"""A whole Steward on real sockets for end-to-end tests: broker, cloud, simulators, one gateway.

``Stack.http`` is logged in to the cloud as an admin (``Stack.admin_password``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from steward.broker import EmbeddedBroker, free_port
from steward.config import SiteConfig, parse_site_config


def site_config(tmp_path: Path, broker_port: int, devices: list[dict[str, Any]], **extra: Any) -> SiteConfig:
    data: dict[str, Any] = {
        "site_id": "oak-garden",
        "site_name": "Oak Garden",
        "gateway_id": "gw-1",
        "uplink": {"broker_url": f"mqtt://127.0.0.1:{broker_port}"},
        "buffer": {"path": str(tmp_path / "edge.db"), "linger_ms": 5, "resend_timeout_s": 3},
        "devices": devices,
        **extra,
    }
    return parse_site_config(data, "test-site")


@dataclass
class Stack:
    site: SiteConfig
    broker: EmbeddedBroker
    http: httpx.AsyncClient
    sims: dict[str, Any]
    gateway: Any
    cloud_settings: Any
    admin_password: str = ""

    async def wait_for(
        self, path: str, check: Any = lambda r: r.status_code == 200, timeout: float = 10
    ) -> Any:
        """GET until ``check(response)`` holds; return the response (fails the test on timeout)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            r = await self.http.get(path)
            if check(r):
                return r
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting on {path}: last {r.status_code} {r.text[:500]}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path, devices: list[dict[str, Any]], *, travel_time_s: float = 0.2, **site_extra: Any
) -> AsyncIterator[Stack]:
    from cloud.auth import create_user
    from cloud.main import serve
    from cloud.settings import CloudSettings
    from edge.gateway import Gateway
    from simulators.registry import run_site_simulators

    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, devices, **site_extra)
        settings = CloudSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
            broker_port=broker.port,
            http_port=free_port(),
            client_id="cloud-test",
        )
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            cloud = tg.create_task(serve(settings, ready=ready))
            async with asyncio.timeout(20):
                await ready.wait()
            async with run_site_simulators(site, travel_time_s=travel_time_s) as sims:
                gateway = Gateway(site)
                gw = tg.create_task(gateway.run())
                async with asyncio.timeout(20):
                    await gateway.started.wait()
                base = f"http://127.0.0.1:{settings.http_port}"
                password = await create_user(settings, "admin", replace=True)
                async with httpx.AsyncClient(base_url=base, timeout=15) as http:
                    login = await http.post(
                        "/api/v1/auth/login", json={"username": "admin", "password": password}
                    )
                    login.raise_for_status()
                    http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                    try:
                        yield Stack(site, broker, http, sims, gateway, settings, password)
                    finally:
                        gw.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await gw
            cloud.cancel()
