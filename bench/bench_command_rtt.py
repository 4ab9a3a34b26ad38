"""Command round trip: HTTP POST -> cloud -> broker -> gateway that answers at once -> status succeeded,
against a raw MQTT publish-and-echo round trip on the same broker in the same run.

    .venv/bin/python -m bench.bench_command_rtt [N]

Runs on the embedded amqtt broker, and on Mosquitto at 127.0.0.1:1883 when it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cloud import CloudSettings, serve
from protocol import Command, CommandResult, CommandStatus, DeviceInfo, GatewayStatus, Topics, new_id
from steward.mqtt import MqttClient

SITE, GATEWAY = "bench-site", "bench-gw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.asynccontextmanager
async def _amqtt() -> AsyncIterator[int]:
    from amqtt.broker import Broker

    port = _free_port()
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
        await broker.shutdown()


@contextlib.asynccontextmanager
async def _mosquitto() -> AsyncIterator[int]:
    yield 1883


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _gateway(client: MqttClient, topics: Topics) -> None:
    """Answer every command with succeeded, at once."""
    async for msg in client.messages():
        cmd = Command.model_validate_json(msg.payload)
        result = CommandResult(
            command_id=cmd.id,
            gateway_id=GATEWAY,
            device_id=cmd.device_id,
            status=CommandStatus.SUCCEEDED,
            at=datetime.now(UTC),
        )
        await client.publish(topics.results, result.to_bytes(), qos=1)


async def _echo(client: MqttClient, reply: str) -> None:
    async for msg in client.messages():
        await client.publish(reply, msg.payload, qos=1)


async def _command_rtt(port: int, n: int, db: Path) -> list[float]:
    prefix = f"bench{new_id().lower()[-8:]}"
    settings = CloudSettings(
        database_url=f"sqlite+aiosqlite:///{db}",
        broker_port=port,
        http_port=_free_port(),
        topic_prefix=prefix,
        client_id=f"bench-cloud-{prefix[-6:]}",
    )
    topics = Topics(prefix, SITE, GATEWAY)
    ready = asyncio.Event()
    samples: list[float] = []
    async with asyncio.TaskGroup() as tg:
        cloud = tg.create_task(serve(settings, ready=ready))
        await asyncio.wait_for(ready.wait(), 20)
        gw = MqttClient("127.0.0.1", port, client_id=f"bench-gw-{prefix[-6:]}")
        await gw.connect()
        await gw.subscribe(topics.commands)
        answering = tg.create_task(_gateway(gw, topics))
        status = GatewayStatus(
            site_id=SITE,
            gateway_id=GATEWAY,
            online=True,
            at=datetime.now(UTC),
            devices=[DeviceInfo(id="gate-1", kind="barrier_gate", model="bench")],
        )
        await gw.publish(topics.status, status.to_bytes(), qos=1)
        base = f"http://127.0.0.1:{settings.http_port}/api/v1"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for _ in range(100):
                if (await http.get("/devices/gate-1")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            for i in range(n + 10):
                t0 = time.perf_counter()
                cmd = (await http.post("/devices/gate-1/commands", json={"action": "open"})).json()
                while cmd["status"] != "succeeded":
                    cmd = (await http.get(f"/commands/{cmd['id']}", params={"wait": 5})).json()
                if i >= 10:  # warm-up
                    samples.append(time.perf_counter() - t0)
        answering.cancel()
        await gw.disconnect()
        cloud.cancel()
    return samples


async def _raw_rtt(port: int, n: int) -> list[float]:
    tag = new_id().lower()[-8:]
    ping, pong = f"bench/{tag}/ping", f"bench/{tag}/pong"
    samples: list[float] = []
    async with (
        MqttClient("127.0.0.1", port, client_id=f"bench-a-{tag}") as a,
        MqttClient("127.0.0.1", port, client_id=f"bench-b-{tag}") as b,
        asyncio.TaskGroup() as tg,
    ):
        await a.subscribe(pong)
        await b.subscribe(ping)
        echo = tg.create_task(_echo(b, pong))
        for i in range(n + 10):
            t0 = time.perf_counter()
            await a.publish(ping, b"x", qos=1)
            await a.get_message(timeout=5)
            if i >= 10:
                samples.append(time.perf_counter() - t0)
        echo.cancel()
    return samples


async def _run(n: int) -> None:
    brokers = [("amqtt (embedded)", _amqtt)]
    if _reachable(1883):
        brokers.append(("mosquitto 127.0.0.1:1883", _mosquitto))
    with tempfile.TemporaryDirectory() as tmp:
        for name, broker in brokers:
            async with broker() as port:
                cmd = await _command_rtt(port, n, Path(tmp) / f"{name.split()[0]}.db")
                raw = await _raw_rtt(port, n)
            c50, c99, r50, r99 = _pct(cmd, 0.5), _pct(cmd, 0.99), _pct(raw, 0.5), _pct(raw, 0.99)
            print(f"{name}: n={n}")
            print(f"  command HTTP->broker->gateway->succeeded  p50 {c50:7.2f} ms  p99 {c99:7.2f} ms")
            print(f"  raw MQTT publish-and-echo                 p50 {r50:7.2f} ms  p99 {r99:7.2f} ms")
            mean_ratio = statistics.mean(cmd) / statistics.mean(raw)
            print(
                f"  ratio command/raw                         p50 {c50 / r50:7.1f}x   mean {mean_ratio:.1f}x"
            )


def main() -> None:
    from steward.logging import configure_logging

    configure_logging("WARNING")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    asyncio.run(_run(n))


if __name__ == "__main__":
    main()
