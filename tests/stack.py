"""A whole Steward on real sockets for end-to-end tests: broker, cloud, simulators, one gateway.

``Stack.http`` is logged in to the cloud as an admin (``Stack.admin_password``). The cloud stores on a
SQLite file, or where ``database`` says (the ``cloud_db`` fixture: SQLite, PostgreSQL). With
``link=True`` the gateway reaches the broker through a :class:`LinkProxy` (``Stack.link``)."""

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


# A database URL and the CloudSettings it needs besides (the ``cloud_db`` fixture gives one per database).
CloudDb = tuple[str, dict[str, Any]]


class LinkProxy:
    """A TCP relay; :meth:`cut` drops every connection and refuses new ones until :meth:`restore`;
    :meth:`hold` stops carrying bytes (connections stay open, as on a link that stalls) until
    :meth:`release` delivers what waited."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        for task in (
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@dataclass
class Stack:
    site: SiteConfig
    broker: EmbeddedBroker
    http: httpx.AsyncClient
    sims: dict[str, Any]
    gateway: Any
    cloud_settings: Any
    admin_password: str = ""
    link: LinkProxy | None = None

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
    tmp_path: Path,
    devices: list[dict[str, Any]],
    *,
    travel_time_s: float = 0.2,
    database: CloudDb | None = None,
    link: bool = False,
    **site_extra: Any,
) -> AsyncIterator[Stack]:
    from cloud.auth import create_user
    from cloud.main import serve
    from cloud.settings import CloudSettings
    from edge.gateway import Gateway
    from simulators.registry import run_site_simulators

    url, db_extra = database or (f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}", {})
    async with EmbeddedBroker(port=0) as broker:
        proxy = LinkProxy(broker.port) if link else None
        if proxy is not None:
            await proxy.start()
        site = site_config(tmp_path, proxy.port if proxy else broker.port, devices, **site_extra)
        settings = CloudSettings(
            database_url=url,
            broker_port=broker.port,
            http_port=free_port(),
            client_id="cloud-test",
            command_signing_key_file=tmp_path / "command-signing.pem",
            broker_accounts_file=tmp_path / "broker-accounts.json",
            **db_extra,
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
                        yield Stack(site, broker, http, sims, gateway, settings, password, proxy)
                    finally:
                        if proxy is not None:
                            proxy.release()  # a held link would keep the gateway's goodbye from the broker
                        gw.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await gw
                        if proxy is not None:
                            await proxy.cut()
            cloud.cancel()
