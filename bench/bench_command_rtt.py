"""Command round trip: an operator's HTTP POST to "open" until the API reports the gate open, through the
real parts: the cloud (uvicorn, SQLite store, signing), the broker, the real gateway (signature check,
replay store, barrier-gate driver over Modbus TCP) and the barrier-gate simulator with zero travel time.
Baseline, same run and broker: a raw paho QoS 1 publish-and-echo round trip (paho's own threads and
callbacks, nothing of ours), and beside it the same echo through :mod:`steward.mqtt`.

    .venv/bin/python -m bench.bench_command_rtt [N] [--broker amqtt|mosquitto|both] [--layout ...]

Each sample is one ``open``, asked for in one of three ways, alternating in the same run: one request,
``POST /devices/{id}/commands?wait=5`` (answered when the command has finished), sent by a lean HTTP/1.1
client over a kept-alive connection (the goal's figure: from the request to the answer, without a
Python client library's own work, see ``_LeanHttp``) and the same from httpx; and a POST answered at
once followed by ``GET /commands/{id}?wait=5`` long-polls until final (httpx). An untimed
``close`` between samples puts the gate back so every ``open`` really drives it. Runs on the embedded amqtt
broker, and on a Mosquitto of its own (`set_tcp_nodelay true`, as deployed) when `mosquitto` is installed.

``--readers N`` runs N more processes beside the timed commands, each a console reading the API (events,
readings, devices, sites, in turn) every ``--read-interval`` seconds: what the commands wait for when
reads hold the database's write lock.

``--layout processes`` (default) runs them as deployed: the broker (amqtt: ``steward broker run``), the
cloud (``steward cloud run``) and the gateway with its simulator each in their own process; this process
is only the HTTP client and the raw baseline's two paho clients. ``--layout one`` puts everything on one
event loop (how earlier figures were taken; every hop then competes for one interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from protocol import new_id
from steward.mqtt import MqttClient
from steward.net import free_port

GATE = "gate-1"
ROOT = Path(__file__).resolve().parents[1]
# Child processes import from the tree this file is in (a checkout of another commit measures that).
_STEWARD = [sys.executable, "-c", "from steward.cli import app; app()"]


def _reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


async def _until_reachable(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    async with asyncio.timeout(30):
        while not _reachable(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")
            await asyncio.sleep(0.05)


# A console reading the API beside the timed commands (``--readers``): GETs in turn, one per interval,
# until terminated; prints how many it made.
_READER = """
import signal, sys, time, httpx
base, token, gate, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
paths = ["/events?limit=100", f"/devices/{gate}/readings?bucket=1h", "/devices?limit=500", "/sites"]
made = 0
def stop(*_):
    print(made, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with httpx.Client(base_url=base, headers={"Authorization": "Bearer " + token}, timeout=30) as http:
    while True:
        http.get(paths[made % len(paths)]).raise_for_status()
        made += 1
        time.sleep(interval)
"""


@contextlib.contextmanager
def _readers(count: int, base: str, token: str, interval: float) -> Any:
    """``count`` reader processes until the block ends; yields a list the GETs they made is added to."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, base, token, GATE, str(interval)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    made: list[int] = []
    try:
        yield made
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            out, _ = proc.communicate(timeout=15)
            if proc.returncode != 0:
                raise RuntimeError(f"a reader failed (exit {proc.returncode}): the API refused a GET")
            made.append(int(out.split()[-1]))


# The child processes of the running layout, by role: their CPU per command is printed (it moves much
# less with this shared machine's load than the milliseconds do).
_PIDS: dict[str, int] = {}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _child(args: list[str], env: dict[str, str] | None = None, *, role: str) -> Any:
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE)
    _PIDS[role] = proc.pid
    try:
        yield proc
    finally:
        _PIDS.pop(role, None)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.asynccontextmanager
async def _amqtt(layout: str) -> AsyncIterator[int]:
    if layout == "one":
        from steward.broker import EmbeddedBroker

        async with EmbeddedBroker(port=0) as broker:
            yield broker.port
        return
    port = free_port()
    with _child([*_STEWARD, "broker", "run", "--port", str(port)], role="broker") as proc:
        await _until_reachable(port, proc, "the broker")
        yield port


@contextlib.asynccontextmanager
async def _mosquitto(layout: str) -> AsyncIterator[int]:
    """Our own Mosquitto on a free port, configured as ``steward cloud broker-config`` deploys it on the
    point that matters here, ``set_tcp_nodelay true`` (the machine's broker on 1883 may not set it, and
    then every QoS 1 hop waits ~40 ms on Nagle and delayed ACKs). Anonymous: the bench measures latency,
    tests/security covers the accounts."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "persistence false\nlog_dest none\n"
        )
        with _child(["mosquitto", "-c", str(conf)], role="broker") as proc:
            await _until_reachable(port, proc, "mosquitto")
            yield port


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _until_final(http: httpx.AsyncClient, cmd: dict[str, Any]) -> dict[str, Any]:
    while not cmd["final"]:
        resp = await http.get(f"/commands/{cmd['id']}", params={"wait": 5, "seen": cmd["status"]})
        resp.raise_for_status()
        cmd = resp.json()
    return cmd


async def _command(http: httpx.AsyncClient, action: str, *, long_poll: bool = False) -> dict[str, Any]:
    params = {} if long_poll else {"wait": 5}
    resp = await http.post(f"/devices/{GATE}/commands", json={"action": action}, params=params)
    resp.raise_for_status()
    cmd = await _until_final(http, resp.json())
    if cmd["status"] != "succeeded":
        raise RuntimeError(f"{action} ended {cmd['status']}: {cmd['result_reason']}")
    return cmd


class _LeanHttp:
    """One kept-alive HTTP/1.1 connection that writes a whole request at once and reads the response
    by its Content-Length: as a browser's ``fetch`` does, and unlike httpx, whose own Python work on
    this machine added about 0.85 ms before the request reached the server (headers and body in two
    writes) and 1.25 ms after the response left it (traced, every kind of request alike). The timed
    ``POST ?wait`` goes through this; the long-polls and the set-up through httpx."""

    def __init__(self, base: str, token: str) -> None:
        url = httpx.URL(base)
        self.host, self.port, self.path = url.host, url.port, url.path.rstrip("/")
        self.token = token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        self.writer.write(
            f"POST {self.path}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(h.split(": ", 1) for h in header_lines if h)
        length = int({k.lower(): v for k, v in headers.items()}["content-length"])
        data = await self.reader.readexactly(length)
        status = int(status_line.split(" ", 2)[1])
        if not 200 <= status < 300:
            raise RuntimeError(f"POST {path}: {status_line}: {data[:300]!r}")
        return dict(json.loads(data))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


def _cloud_env(port: int, tmp: Path, prefix: str, http_port: int) -> dict[str, str]:
    return {
        "STEWARD_CLOUD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'cloud.db'}",
        "STEWARD_CLOUD_BROKER_PORT": str(port),
        "STEWARD_CLOUD_HTTP_PORT": str(http_port),
        "STEWARD_CLOUD_TOPIC_PREFIX": prefix,
        "STEWARD_CLOUD_CLIENT_ID": f"bench-cloud-{prefix[-6:]}",
        "STEWARD_CLOUD_COMMAND_SIGNING_KEY_FILE": str(tmp / "command-signing.pem"),
        "STEWARD_CLOUD_BROKER_ACCOUNTS_FILE": str(tmp / "broker-accounts.json"),
    }


def _site(port: int, tmp: Path, prefix: str, sim_port: int, public_key: str) -> dict[str, Any]:
    return {
        "site_id": "bench-site",
        "site_name": "Bench estate",
        "gateway_id": f"bench-gw-{prefix[-6:]}",
        "uplink": {
            "broker_url": f"mqtt://127.0.0.1:{port}",
            "topic_prefix": prefix,
            # The gateway checks every command's signature, as deployed.
            "command_public_key": public_key,
        },
        "buffer": {"path": str(tmp / "edge.db")},
        "devices": [
            {
                "id": GATE,
                "kind": "barrier_gate",
                "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": sim_port, "unit": 1},
                "poll_interval_s": 1.0,
                # No button-press hold: with zero travel the driver's own work is all that is left.
                "options": {"pulse_s": 0},
            }
        ],
    }


@contextlib.asynccontextmanager
async def _edge(site: dict[str, Any]) -> AsyncIterator[None]:
    """The gateway and a zero-travel gate simulator on the simulator's port in ``site``, until the block
    ends (this loop, ``--layout one``)."""
    from edge.gateway import Gateway
    from simulators.barrier_gate import BarrierGateSimulator
    from steward.config import parse_site_config

    sim = BarrierGateSimulator(travel_time_s=0, port=site["devices"][0]["transport"]["port"])
    await sim.start()
    try:
        async with asyncio.TaskGroup() as tg:
            gateway = Gateway(parse_site_config(site, "bench-site"))
            edge = tg.create_task(gateway.run(), name="bench-gateway")
            async with asyncio.timeout(30):
                await gateway.started.wait()
            try:
                yield
            finally:
                edge.cancel()
    finally:
        await sim.stop()


async def _edge_child(site: dict[str, Any]) -> None:
    """``--edge-child``: the gateway and its simulator in this process, until terminated."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with _edge(site):
        print("ready", flush=True)
        await stop.wait()


@contextlib.asynccontextmanager
async def _system(port: int, tmp: Path, layout: str) -> AsyncIterator[str]:
    """Cloud, gateway and simulator on ``port``'s broker; yields the API's base URL."""
    from cloud import CloudSettings, serve
    from cloud.auth.keys import load_command_signing_key
    from protocol.signing import public_key_b64

    prefix = f"bench{new_id().lower()[-8:]}"
    http_port = free_port()
    env = _cloud_env(port, tmp, prefix, http_port)
    settings = CloudSettings.from_env(env)
    site = _site(port, tmp, prefix, free_port(), public_key_b64(load_command_signing_key(settings)))
    if layout == "one":
        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Event()
            cloud = tg.create_task(serve(settings, ready=ready), name="bench-cloud")
            async with asyncio.timeout(30):
                await ready.wait()
            try:
                async with _edge(site):
                    yield f"http://127.0.0.1:{http_port}/api/v1"
            finally:
                cloud.cancel()
        return
    site_file = tmp / "site.json"
    site_file.write_text(json.dumps(site))
    with (
        _child([*_STEWARD, "cloud", "run", "--log-level", "WARNING"], env, role="cloud") as cloud,
        _child(
            [sys.executable, "-m", "bench.bench_command_rtt", "--edge-child", str(site_file)], role="gateway"
        ) as edge,
    ):
        await _until_reachable(http_port, cloud, "the cloud")
        assert edge.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(edge.stdout.readline), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"the gateway did not start: {line!r}")
        yield f"http://127.0.0.1:{http_port}/api/v1"


async def _command_rtt(
    port: int, n: int, tmp: Path, layout: str, *, readers: int = 0, read_interval: float = 0.05
) -> tuple[list[float], list[float], list[float], dict[str, float], float]:
    """Samples of ``open`` answered in one request (POST ?wait) from a lean client and from httpx, and
    with long-polls (httpx), alternating; and each child process's CPU milliseconds per command (the
    opens and the closes between them); and the readers' GETs per second."""
    from cloud import CloudSettings
    from cloud.auth import create_user

    samples: list[float] = []
    with_httpx: list[float] = []
    polled: list[float] = []
    async with _system(port, tmp, layout) as base:
        settings = CloudSettings(database_url=f"sqlite+aiosqlite:///{tmp / 'cloud.db'}", run_migrations=False)
        async with httpx.AsyncClient(base_url=base, timeout=15) as http:
            async with asyncio.timeout(30):
                # The cloud migrates its database at start-up; the account goes in once it answers.
                while (await http.get("/devices")).status_code != 401:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            password = await create_user(settings, "bench", replace=True)
            login = await http.post("/auth/login", json={"username": "bench", "password": password})
            login.raise_for_status()
            token = login.json()["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"
            lean = _LeanHttp(base, token)
            async with asyncio.timeout(30):
                # The gateway's retained status registers the gate; poll the API until it has.
                while (await http.get(f"/devices/{GATE}")).status_code != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await _command(http, "close")
            pids = dict(_PIDS)
            cpu_before = {role: _cpu_s(pid) for role, pid in pids.items()}
            rounds = 3 * (n + 10)
            reads = contextlib.ExitStack()
            made = reads.enter_context(_readers(readers, base, token, read_interval))
            started = time.perf_counter()
            try:
                for i in range(rounds):
                    way = (samples, with_httpx, polled)[i % 3]
                    t0 = time.perf_counter()
                    if way is samples:
                        done = await lean.post(f"/devices/{GATE}/commands?wait=5", {"action": "open"})
                    else:
                        done = await _command(http, "open", long_poll=way is polled)
                    elapsed = time.perf_counter() - t0
                    if done["status"] != "succeeded" or done["result_state"].get("state") != "open":
                        raise RuntimeError(
                            f"gate not open after open: {done['status']} {done['result_state']}"
                        )
                    if i >= 30:  # warm-up
                        way.append(elapsed)
                    await _command(http, "close")  # untimed: the next open drives the gate again
            finally:
                await lean.close()
                reads.close()
            reads_per_s = sum(made) / (time.perf_counter() - started)
            cpu = {role: 1000 * (_cpu_s(pid) - cpu_before[role]) / (2 * rounds) for role, pid in pids.items()}
    return samples, with_httpx, polled, cpu, reads_per_s


async def _echo(client: MqttClient, reply: str) -> None:
    async for msg in client.messages():
        await client.publish(reply, msg.payload, qos=1)


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


def _raw_paho_rtt(port: int, n: int) -> list[float]:
    """The issue's baseline as written: paho alone, no asyncio. Two clients with paho's own network
    threads (``loop_start``), ``TCP_NODELAY`` set, the echo published from paho's message callback, the
    sender waiting on a ``threading.Event``."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    tag = new_id().lower()[-8:]
    ping, pong = f"bench/{tag}/paho-ping", f"bench/{tag}/paho-pong"
    got, ready = threading.Event(), threading.Semaphore(0)

    def client(name: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{tag}", protocol=paho.MQTTv311)
        c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.on_connect = c.on_subscribe = lambda *_: ready.release()
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    def acks(what: str) -> None:
        for _ in range(2):
            if not ready.acquire(timeout=5):
                raise RuntimeError(f"raw paho baseline: no {what} within 5 s")

    a, b = client("paho-a"), client("paho-b")
    a.on_message = lambda *_: got.set()
    b.on_message = lambda _c, _u, msg: b.publish(pong, msg.payload, qos=1)
    try:
        acks("CONNACK")  # amqtt drops a SUBSCRIBE sent before it has answered the CONNECT
        a.subscribe(pong, 1)
        b.subscribe(ping, 1)
        acks("SUBACK")
        samples: list[float] = []
        for i in range(n + 10):
            got.clear()
            t0 = time.perf_counter()
            a.publish(ping, b"x", qos=1)
            if not got.wait(5):
                raise RuntimeError("raw paho baseline: no echo within 5 s")
            if i >= 10:
                samples.append(time.perf_counter() - t0)
    finally:
        for c in (a, b):
            c.disconnect()
            c.loop_stop()
    return samples


async def _raw_modbus_open(n: int) -> list[float]:
    """The device's share of an ``open``, with nothing of ours: the same four requests the driver makes
    (limits, OPEN coil on, off, limits again), bare pymodbus against a zero-travel gate simulator in
    this process, as the gateway has it in its own."""
    from pymodbus.client import AsyncModbusTcpClient

    from simulators.barrier_gate import BarrierGateSimulator

    port = free_port()
    sim = BarrierGateSimulator(travel_time_s=0, port=port)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    samples: list[float] = []
    try:
        if not await client.connect():
            raise RuntimeError("raw Modbus baseline: cannot connect to the simulator")
        for i in range(n + 10):
            t0 = time.perf_counter()
            await client.read_discrete_inputs(0, count=5, device_id=1)
            await client.write_coil(0, True, device_id=1)
            await client.write_coil(0, False, device_id=1)
            limits = await client.read_discrete_inputs(0, count=5, device_id=1)
            elapsed = time.perf_counter() - t0
            if not limits.bits[0]:
                raise RuntimeError("raw Modbus baseline: the gate did not open")
            if i >= 10:
                samples.append(elapsed)
            await client.write_coil(1, True, device_id=1)  # untimed: close it again
            await client.write_coil(1, False, device_id=1)
    finally:
        client.close()
        await sim.stop()
    return samples


async def _run(n: int, which: str, layout: str, readers: int, read_interval: float) -> None:
    brokers = []
    if which in ("amqtt", "both"):
        brokers.append(("amqtt (embedded)", _amqtt))
    if which in ("mosquitto", "both"):
        if shutil.which("mosquitto"):
            brokers.append(("mosquitto (own, set_tcp_nodelay)", _mosquitto))
        else:
            print("mosquitto: not installed, skipped")
    for name, broker in brokers:
        with tempfile.TemporaryDirectory() as tmp:
            async with broker(layout) as port:
                cmd, with_httpx, polled, cpu, reads = await _command_rtt(
                    port, n, Path(tmp), layout, readers=readers, read_interval=read_interval
                )
                raw = await asyncio.to_thread(_raw_paho_rtt, port, n)
                ours = await _raw_rtt(port, n)
                device = await _raw_modbus_open(n)
        c50, c99, r50, r99 = _pct(cmd, 0.5), _pct(cmd, 0.99), _pct(raw, 0.5), _pct(raw, 0.99)
        beside = f", {readers} readers beside ({reads:.0f} GETs/s)" if readers else ""
        print(f"{name}, layout {layout}: n={n}{beside}")
        print(f"  command HTTP->cloud->gateway->gate open   p50 {c50:7.2f} ms  p99 {c99:7.2f} ms  POST ?wait")
        print(
            f"  the same, from httpx                      p50 {_pct(with_httpx, 0.5):7.2f} ms"
            f"  p99 {_pct(with_httpx, 0.99):7.2f} ms"
        )
        print(
            f"  the same, POST then GET long-polls        p50 {_pct(polled, 0.5):7.2f} ms"
            f"  p99 {_pct(polled, 0.99):7.2f} ms  (httpx)"
        )
        print(f"  raw paho publish-and-echo (the baseline)  p50 {r50:7.2f} ms  p99 {r99:7.2f} ms")
        print(
            f"  the same through steward.mqtt             p50 {_pct(ours, 0.5):7.2f} ms"
            f"  p99 {_pct(ours, 0.99):7.2f} ms"
        )
        d50 = _pct(device, 0.5)
        d99 = _pct(device, 0.99)
        print(f"  raw pymodbus, the open's 4 requests       p50 {d50:7.2f} ms  p99 {d99:7.2f} ms")
        print(
            f"  floor: raw echo + raw device I/O          p50 {r50 + d50:7.2f} ms"
            f"  = {(r50 + d50) / r50:.1f}x raw paho, before HTTP, store, signature and replay guard"
        )
        mean_ratio = statistics.mean(cmd) / statistics.mean(raw)
        verdict = "met" if c50 <= 3 * r50 else "NOT met"
        print(
            f"  ratio command/raw paho                    p50 {c50 / r50:7.1f}x   mean {mean_ratio:.1f}x"
            f"  (goal <= 3x: {verdict})"
        )
        if cpu:
            print(
                "  CPU per command (opens and closes)        "
                + ", ".join(f"{r} {ms:.2f} ms" for r, ms in cpu.items())
            )


def main() -> None:
    from steward.logging import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=200, help="timed commands per broker")
    parser.add_argument("--broker", choices=["amqtt", "mosquitto", "both"], default="both")
    parser.add_argument("--layout", choices=["processes", "one"], default="processes")
    parser.add_argument("--readers", type=int, default=0, help="console reader processes beside")
    parser.add_argument("--read-interval", type=float, default=0.05, help="seconds between a reader's GETs")
    parser.add_argument("--edge-child", metavar="SITE_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("WARNING")
    if args.edge_child:
        asyncio.run(_edge_child(json.loads(Path(args.edge_child).read_text())))
        return
    asyncio.run(_run(args.n, args.broker, args.layout, args.readers, args.read_interval))


if __name__ == "__main__":
    main()
