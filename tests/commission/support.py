"""Real parts for the commissioning-with-the-cloud tests, hosted on an event loop in a background thread
while the ``steward commission`` CLI runs in the test's thread through Typer's CliRunner (with its own
blocking HTTP client), exactly as an installer's shell would run it against a remote cloud."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog
from typer.testing import CliRunner

from cloud.auth import Role
from protocol import DeviceInfo
from steward.commission import commission_app
from tests.auth.support import App, Clock, served
from tests.cloud.support import FakeGateway, cloud_settings, embedded_broker

T = TypeVar("T")
CLOUD_BROKER_PASSWORD = "cloud-broker-password-1"


class BackgroundLoop:
    """An event loop on a thread; ``run`` a coroutine on it from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bg-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Hosted:
    """Keeps an async context manager open on the background loop, entered and exited in one task
    (so cancel scopes and task-bound resources stay in the task that made them)."""

    def __init__(self, bg: BackgroundLoop, make: Callable[[], contextlib.AbstractAsyncContextManager[T]]):
        self.bg = bg
        self._make = make
        self._entered: threading.Event = threading.Event()
        self.value: Any = None
        self._stop: asyncio.Event | None = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self._make() as value:
            self.value = value
            self._entered.set()
            await self._stop.wait()

    def __enter__(self) -> Any:
        self._future = asyncio.run_coroutine_threadsafe(self._main(), self.bg.loop)
        while not self._entered.wait(0.05):
            if self._future.done():
                self._future.result()  # raises what failed during start-up
                raise RuntimeError("stopped during start-up")
        return self.value

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.bg.loop.call_soon_threadsafe(self._stop.set)
        self._future.result(30)


@contextlib.asynccontextmanager
async def open_cloud(tmp_path: Path, **extra: Any) -> AsyncIterator[App]:
    """An anonymous embedded broker and the cloud on it (SQLite in ``tmp_path``), with the cloud's own
    broker account configured so the accounts file it writes at registration lets it back in."""
    async with embedded_broker() as port:
        settings = cloud_settings(
            port,
            f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
            broker_username="steward-cloud",
            broker_password=CLOUD_BROKER_PASSWORD,
            **extra,
        )
        async with served(settings) as app:
            app.auth.clock = Clock()  # tests move it to expire tokens
            yield app


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The cloud's and the simulators' logs must not land in the CLI's captured stdout."""
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__),
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(commission_app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def token_for(bg: BackgroundLoop, app: App, username: str, role: Role, sites: list[str]) -> str:
    """A login token of a new account, as an installer would get with ``steward`` login or the console."""
    headers = bg.run(app.user(username, role, sites))
    return headers["Authorization"].removeprefix("Bearer ")


def api(app: App, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    """A request to the cloud from the test's thread (its own blocking client)."""
    base = f"http://{app.settings.http_host}:{app.settings.http_port}"
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    with httpx.Client(base_url=base, timeout=20) as http:
        return http.request(method, path, headers=headers, **kwargs)


def cloud_url(app: App) -> str:
    return f"http://{app.settings.http_host}:{app.settings.http_port}"


def reported(
    bg: BackgroundLoop, cloud: App, site: str, gateway: str, devices: list[DeviceInfo] | None = None
) -> None:
    """A stand-in gateway reports itself and ``devices`` (default: gate-1, door-1, meter-1) on the open
    test broker; returns once the cloud has stored the report."""

    async def report() -> None:
        async with FakeGateway(cloud.settings.broker_port, site=site, gateway=gateway) as gw:
            await gw.send_status(online=True, devices=devices)

    bg.run(report())
    admin = token_for(bg, cloud, f"root-{gateway}", Role.ADMIN, [])
    for _ in range(200):
        found = api(cloud, "GET", "/api/v1/gateways", admin, params={"site_id": site}).json()["items"]
        if found and found[0]["last_seen"]:
            return
        bg.run(asyncio.sleep(0.05))
    raise AssertionError(f"the cloud did not store {gateway}'s report within 10 s")
