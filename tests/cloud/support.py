"""Real things for cloud tests: an embedded amqtt broker, the cloud on a real port (its ``http`` client
logged in as an admin), a fake gateway that speaks the wire protocol through steward.mqtt.MqttClient."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from cloud import CloudSettings, serve
from cloud.auth import create_user
from protocol import (
    BatchAck,
    Command,
    CommandResult,
    CommandStatus,
    DeviceInfo,
    Event,
    EventBatch,
    GatewayStatus,
    Topics,
    new_id,
)
from steward.mqtt import MqttClient
from steward.net import free_port

SITE, GATEWAY = "estate-a", "gw-1"
DEVICES = [
    DeviceInfo(id="gate-1", kind="barrier_gate", model="generic", name="North gate, inbound (北门入口道闸)"),
    DeviceInfo(id="door-1", kind="door_access", model="generic"),
    DeviceInfo(id="meter-1", kind="smart_meter", model="generic"),
]


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.asynccontextmanager
async def embedded_broker() -> AsyncIterator[int]:
    from amqtt.broker import Broker

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await asyncio.wait_for(broker.shutdown(), 10)


def cloud_settings(broker_port: int, database_url: str, **extra: Any) -> CloudSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "broker_port": broker_port,
        "http_port": free_port(),
        "client_id": f"cloud-{new_id()[-8:]}",
        "sweep_interval_s": 0.1,
    }
    if database_url.startswith("postgresql"):
        # No database file to sit beside: keep the signing key and broker accounts out of ./var.
        state = Path(tempfile.mkdtemp(prefix="steward-cloud-"))
        values["command_signing_key_file"] = state / "command-signing.pem"
        values["broker_accounts_file"] = state / "broker-accounts.json"
    values.update(extra)
    return CloudSettings(**values)


ADMIN = "admin"


async def login(http: httpx.AsyncClient, username: str, password: str) -> str:
    """Log in over HTTP; returns the bearer token."""
    resp = await http.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


@dataclass
class RunningCloud:
    settings: CloudSettings
    http: httpx.AsyncClient
    admin_password: str = ""


@contextlib.asynccontextmanager
async def running_cloud(settings: CloudSettings) -> AsyncIterator[RunningCloud]:
    """The real service (uvicorn on a loopback port) until the block ends; then cancelled and awaited.
    ``http`` carries an admin's bearer token."""

    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready), name=f"cloud-{settings.client_id}")
    try:
        ready_wait = asyncio.ensure_future(ready.wait())
        try:
            done, _ = await asyncio.wait({ready_wait, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready_wait.cancel()
        if task in done:
            task.result()
            raise RuntimeError("cloud stopped during start-up")
        if not done:
            raise TimeoutError("cloud not ready within 20 s")
        base = f"http://{settings.http_host}:{settings.http_port}"
        password = await create_user(settings, ADMIN, replace=True)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            http.headers["Authorization"] = f"Bearer {await login(http, ADMIN, password)}"
            yield RunningCloud(settings, http, password)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


def make_event(device_id: str, type_: str, seq: int, data: dict[str, Any] | None = None, **kw: Any) -> Event:
    now = kw.pop("ts", None) or datetime.now(UTC)
    return Event(
        id=new_id(), seq=seq, device_id=device_id, type=type_, ts=now, received_at=now, data=data or {}, **kw
    )


def make_batch(events: list[Event], site: str = SITE, gateway: str = GATEWAY, **kw: Any) -> EventBatch:
    return EventBatch(
        batch_id=new_id(),
        site_id=site,
        gateway_id=gateway,
        sent_at=kw.pop("sent_at", datetime.now(UTC)),
        events=events,
    )


@dataclass
class FakeGateway:
    """A gateway on the wire: publishes batches/status/results, receives acks and commands."""

    broker_port: int
    site: str = SITE
    gateway: str = GATEWAY
    prefix: str = "steward"
    client: MqttClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = MqttClient(
            "127.0.0.1", self.broker_port, client_id=f"fake-{self.gateway}-{new_id()[-6:]}"
        )
        self.topics = Topics(self.prefix, self.site, self.gateway)
        self.acks: asyncio.Queue[BatchAck] = asyncio.Queue()
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeGateway:
        await self.client.connect()
        await self.client.subscribe(self.topics.acks)
        await self.client.subscribe(self.topics.commands)
        self._pump = asyncio.create_task(self._route())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.client.disconnect()

    async def _route(self) -> None:
        async for msg in self.client.messages():
            if msg.topic == self.topics.acks:
                self.acks.put_nowait(BatchAck.model_validate_json(msg.payload))
            elif msg.topic == self.topics.commands:
                self.commands.put_nowait(Command.model_validate_json(msg.payload))

    async def send_batch(self, batch: EventBatch) -> None:
        await self.client.publish(self.topics.events, batch.to_bytes(), qos=1)

    async def send_raw(self, kind: str, payload: bytes) -> None:
        await self.client.publish(f"{self.topics.base}/up/{kind}", payload, qos=1)

    async def send_status(self, online: bool = True, devices: list[DeviceInfo] | None = None) -> None:
        status = GatewayStatus(
            site_id=self.site,
            gateway_id=self.gateway,
            online=online,
            at=datetime.now(UTC),
            site_name="Estate A",
            timezone="Asia/Shanghai",
            software="test",
            devices=DEVICES if devices is None else devices,
        )
        await self.client.publish(self.topics.status, status.to_bytes(), qos=1, retain=True)

    async def answer(
        self,
        command: Command,
        status: CommandStatus,
        reason: str | None = None,
        *,
        accepted_at: datetime | None = None,
        **state: Any,
    ) -> None:
        result = CommandResult(
            command_id=command.id,
            gateway_id=self.gateway,
            device_id=command.device_id,
            status=status,
            reason=reason,
            at=datetime.now(UTC),
            state=state,
            accepted_at=accepted_at,
        )
        await self.client.publish(self.topics.results, result.to_bytes(), qos=1)

    async def next_ack(self, timeout: float = 5) -> BatchAck:
        return await asyncio.wait_for(self.acks.get(), timeout)

    async def next_command(self, timeout: float = 5) -> Command:
        return await asyncio.wait_for(self.commands.get(), timeout)


async def eventually(check: Any, timeout: float = 5, interval: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def metric(http: httpx.AsyncClient, name: str) -> int:
    """One sample of ``/metrics``; ``name`` with its labels as rendered, e.g. ``x_total{outcome="sent"}``."""
    text = (await http.get("/metrics")).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return int(float(line.split()[1]))


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


@dataclass
class Stream:
    """An open ``GET /api/v1/stream``: ``received`` is every (kind, data) read so far, in order."""

    lines: AsyncIterator[str]
    content_type: str = ""
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def until(self, done: Any, timeout: float = 5) -> list[tuple[str, dict[str, Any]]]:
        """Read until ``done(received)`` is true; fail, showing what came, after ``timeout`` seconds."""
        kind = ""
        try:
            async with asyncio.timeout(timeout):
                while not done(self.received):
                    line = await anext(self.lines)
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.received.append((kind, json.loads(line.removeprefix("data: "))))
        except TimeoutError:
            raise AssertionError(f"stream: not there within {timeout} s; received {self.received}") from None
        return self.received


@contextlib.asynccontextmanager
async def streaming(http: httpx.AsyncClient, **params: str) -> AsyncIterator[Stream]:
    """The live stream (SSE) as ``http``'s user sees it, connected before the block starts."""
    async with http.stream("GET", "/api/v1/stream", params=params) as resp:
        assert resp.status_code == 200, await resp.aread()
        lines = resp.aiter_lines()
        # Subscribed once "ready" has come: what happens from then on is on the stream.
        assert await asyncio.wait_for(anext(lines), 5) == "event: ready"
        assert (await anext(lines)).startswith("data: ")
        yield Stream(lines, resp.headers.get("content-type", ""))
