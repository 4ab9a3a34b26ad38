"""Drain a deep backlog from the gateway's buffer into the cloud's store, with acknowledgements.

    python -m bench.bench_drain                      # 200,000 events, deployed topology (below)
    python -m bench.bench_drain --events 1000000     # the goal's size
    python -m bench.bench_drain --cloud inline --broker embedded   # everything in one Python process
    python -m bench.bench_drain --postgres           # store in PostgreSQL 127.0.0.1:5432/test
    python -m bench.bench_drain --cloud trivial      # analysis: gateway + broker only (no store)
    python -m bench.bench_drain --profile-cloud cloud.prof   # analysis: cProfile of the cloud process
    python -m bench.bench_drain --uvloop             # the cloud process on uvloop's event loop
    python -m bench.bench_drain --console-elsewhere  # an operator's console open on another estate

Topology. By default as deployed: the gateway (this process), the broker (Mosquitto, its own process;
the embedded amqtt broker in this process if Mosquitto is not installed) and the cloud service (its
own process). ``--cloud inline --broker embedded`` puts all three in this one Python process, sharing
one interpreter lock and event loop.

Figures: end-to-end events/s (buffer -> MQTT -> cloud ingest -> SQLite commit -> ack -> buffer
delete), and the same batches published raw with paho at QoS 1 through the same broker to a raw
subscriber that does nothing, measured in the same run: the transport's ceiling. The run ends by
counting distinct event ids in the cloud store, which must equal the events buffered. Also printed: the
CPU time each process used during the drain, per event; on a shared machine that moves far less with
the load than events/s does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from edge.buffer import EventBuffer, EventDraft
from edge.gateway import Gateway
from protocol import BatchAck, EventBatch, new_id
from protocol.models import Location, utcnow
from steward.broker import EmbeddedBroker, free_port
from steward.config import parse_site_config
from steward.logging import configure_logging
from steward.mqtt import MqttClient

GOAL_RATE = 20_000
BATCH = 500


async def _fill(path: Path, n: int) -> None:
    from steward.config import BufferConfig

    loc = Location(building="1", unit="1", apartment="1202")
    now = datetime.now(UTC)
    async with await EventBuffer.open(BufferConfig(path=path, max_bytes=4 * 1024**3)) as buf:
        for start in range(0, n, 10_000):
            await buf.record_many(
                [
                    EventDraft(
                        f"meter-{i % 50}",
                        "meter.reading",
                        now + timedelta(milliseconds=i),  # each reading its own time, as meters send them
                        {"kwh": 1000.0 + i, "v": 229.8, "w": 880.0},
                        loc,
                    )
                    for i in range(start, min(n, start + 10_000))
                ]
            )


async def _raw_baseline(port: int, n: int, sample: EventBatch) -> float:
    """paho QoS 1 publish of the same-size batches to a subscriber that only counts them."""
    payload = sample.to_bytes()
    batches = max(1, n // len(sample.events))
    async with (
        MqttClient("127.0.0.1", port, client_id="raw-sub") as sub,
        MqttClient("127.0.0.1", port, client_id="raw-pub") as pub,
    ):
        await sub.subscribe("raw/bench", qos=1)
        started = time.perf_counter()
        window = asyncio.Semaphore(8)  # the uplink's own window, for a fair ceiling

        async def one() -> None:
            async with window:
                await pub.publish("raw/bench", payload, qos=1)

        async with asyncio.TaskGroup() as tg:
            for _ in range(batches):
                tg.create_task(one())
            for _ in range(batches):
                await sub.get_message(timeout=60)
        elapsed = time.perf_counter() - started
    return batches * len(sample.events) / elapsed


@contextlib.asynccontextmanager
async def _broker(kind: str, tmp: Path, pids: dict[str, int]):  # type: ignore[no-untyped-def]
    if kind == "embedded":
        async with EmbeddedBroker(port=0) as b:
            yield b.port
        return
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n"
    )
    proc = await asyncio.create_subprocess_exec("mosquitto", "-c", str(conf), stderr=subprocess.DEVNULL)
    pids["broker"] = proc.pid
    try:
        await asyncio.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def _trivial_acker(port: int, ready: asyncio.Event) -> None:
    """Analysis only (``--cloud trivial``): acknowledge every batch at once without storing it, to
    measure the gateway's side (buffer reads and deletes, uplink window) and the broker alone."""
    async with MqttClient("127.0.0.1", port, client_id="trivial-acker") as client:
        await client.subscribe("steward/+/+/+/up/events", qos=1)
        ready.set()
        async for msg in client.messages():
            batch_id = json.loads(msg.payload)["batch_id"]
            ack = BatchAck(batch_id=batch_id, stored=0, duplicates=0).to_bytes()
            await client.publish(msg.topic.rsplit("/", 2)[0] + "/down/acks", ack, qos=1)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_PROFILED = (
    # The bench stops the cloud with SIGTERM, which would end it before cProfile could write.
    "import cProfile, os, signal\n"
    "profile = cProfile.Profile()\n"
    "def _dump(*_):\n"
    "    profile.disable()\n"
    "    profile.dump_stats(sys.argv[2])\n"
    "    os._exit(0)\n"
    "signal.signal(signal.SIGTERM, _dump)\n"
    "profile.enable()\n"
)


def _main_thread_cpu_s(pid: int) -> float:
    """CPU seconds the main thread (the event loop's) of a live process has used so far."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cloud_process(
    settings: Any,
    ready: asyncio.Event,
    pids: dict[str, int],
    profile: Path | None = None,
    uvloop: bool = False,
) -> None:
    """``--cloud process`` (the default): the same cloud service in its own Python process, as deployed:
    the gateway and the cloud do not share one interpreter lock. ``profile``: run it under cProfile and
    write the stats there when it is stopped. ``uvloop``: its event loop is uvloop's."""
    run = "uvloop.run" if uvloop else "asyncio.run"
    code = (
        "import asyncio, sys\n" + ("import uvloop\n" if uvloop else "") + "from cloud.main import serve\n"
        "from cloud.settings import CloudSettings\n"
        "from steward.logging import configure_logging\n"
        "configure_logging('ERROR')\n"
        + (_PROFILED if profile else "")
        + f"{run}(serve(CloudSettings.model_validate_json(sys.argv[1])))\n"
    )
    args = [settings.model_dump_json(), *([str(profile)] if profile else [])]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *args)
    pids["cloud"] = proc.pid
    try:
        url = f"http://127.0.0.1:{settings.http_port}/metrics"
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # ingest subscribes right after the HTTP socket listens
        ready.set()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.shield(proc.wait())


# An operator's console on another estate, in a process of its own (a browser is not in the gateway's):
# reads its live stream until terminated, then prints how many events it was sent.
_CONSOLE = """
import signal, sys, httpx
base, token = sys.argv[1], sys.argv[2]
received = 0
def stop(*_):
    print(received, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
params = {"kinds": "event,command,gateway,work_order", "site_id": "elsewhere"}
headers = {"Authorization": "Bearer " + token}
timeout = httpx.Timeout(10, read=None)
with httpx.stream("GET", base + "/stream", params=params, headers=headers, timeout=timeout) as s:
    s.raise_for_status()
    for line in s.iter_lines():
        if line == "event: event":
            received += 1
"""


async def _console_elsewhere(settings: Any) -> asyncio.subprocess.Process:
    """``--console-elsewhere``: an operator's console open on another estate during the drain (its live
    stream, narrowed to that estate as the console asks since 2026-11-24; a cloud before that sends it
    every estate's events)."""
    from cloud.auth import create_user

    base = f"http://127.0.0.1:{settings.http_port}/api/v1"
    password = await create_user(settings, "bench-console", replace=True)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        login = await http.post("/auth/login", json={"username": "bench-console", "password": password})
        login.raise_for_status()
    token = login.json()["access_token"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONSOLE, base, token, stdout=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(1)  # connected before the drain starts
    if proc.returncode is not None:
        raise RuntimeError(f"the console's stream ended at once (exit {proc.returncode})")
    return proc


async def _console_received(proc: asyncio.subprocess.Process) -> int:
    proc.terminate()
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    if proc.returncode != 0:
        raise RuntimeError(f"the console's stream failed (exit {proc.returncode})")
    return int(out.split()[-1])


async def _pg_counts(settings: Any) -> tuple[int, int]:
    """Count the events in the run's PostgreSQL schema, then drop the schema."""
    from sqlalchemy import text

    from cloud.db import make_engine

    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            stored = (await conn.execute(text("SELECT COUNT(DISTINCT id) FROM events"))).scalar_one()
            rows = (await conn.execute(text("SELECT COUNT(*) FROM events"))).scalar_one()
            await conn.execute(text(f'DROP SCHEMA "{settings.database_schema}" CASCADE'))
    finally:
        await engine.dispose()
    return int(stored), int(rows)


async def _run(
    n: int,
    broker_kind: str,
    cloud_kind: str = "process",
    pg_url: str | None = None,
    profile: Path | None = None,
    *,
    uvloop: bool = False,
    console: bool = False,
) -> None:
    from cloud.main import serve
    from cloud.settings import CloudSettings

    tmp = Path(tempfile.mkdtemp(prefix="steward-drain-"))
    try:
        buf_path = tmp / "edge.db"
        t0 = time.perf_counter()
        await _fill(buf_path, n)
        print(f"buffered {n:,} events in {time.perf_counter() - t0:.1f} s")
        pids: dict[str, int] = {}
        async with _broker(broker_kind, tmp, pids) as port:
            site = parse_site_config(
                {
                    "site_id": "bench",
                    "site_name": "Bench",
                    "gateway_id": "gw-bench",
                    "uplink": {"broker_url": f"mqtt://127.0.0.1:{port}"},
                    "buffer": {
                        "path": str(buf_path),
                        "batch_size": BATCH,  # the default linger_ms (50): a backlog never lingers
                        "resend_timeout_s": 30,
                        "max_bytes": 4 * 1024**3,
                    },
                    "devices": [],
                }
            )
            sample_events = []
            for i in range(BATCH):
                sample_events.append(
                    {
                        "id": new_id(),
                        "seq": i + 1,
                        "device_id": "meter-1",
                        "type": "meter.reading",
                        "ts": utcnow(),
                        "received_at": utcnow(),
                        "location": {"building": "1", "unit": "1", "apartment": "1202"},
                        "data": {"kwh": 1000.0 + i, "v": 229.8, "w": 880.0},
                    }
                )
            sample = EventBatch(
                batch_id=new_id(),
                site_id="bench",
                gateway_id="gw-bench",
                sent_at=utcnow(),
                events=sample_events,
            )
            raw_rate = await _raw_baseline(port, min(n, 200_000), sample)

            db = tmp / "cloud.db"
            schema = f"bench_{new_id().lower()}"
            settings = CloudSettings(
                **(
                    {"database_url": pg_url, "database_schema": schema}
                    if pg_url
                    else {"database_url": f"sqlite+aiosqlite:///{db}"}
                ),
                broker_port=port,
                http_port=free_port(),
                client_id="cloud-bench",
            )
            ready = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                if cloud_kind == "trivial":
                    cloud = tg.create_task(_trivial_acker(port, ready))
                elif cloud_kind == "process":
                    cloud = tg.create_task(_cloud_process(settings, ready, pids, profile, uvloop))
                else:
                    cloud = tg.create_task(serve(settings, ready=ready))
                await asyncio.wait_for(ready.wait(), 30)
                watcher = await _console_elsewhere(settings) if console else None
                gw = Gateway(site)
                cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
                cpu0["gateway"] = time.process_time()
                loop0 = _main_thread_cpu_s(pids["cloud"]) if "cloud" in pids else 0.0
                started = time.perf_counter()
                gw_task = tg.create_task(gw.run())
                await asyncio.wait_for(gw.started.wait(), 30)
                while True:
                    await asyncio.sleep(0.25)
                    if (await gw.buffer.stats()).depth == 0:  # type: ignore[union-attr]
                        break
                elapsed = time.perf_counter() - started
                # The WAL keeps its high-water mark until the last connection closes: how far it grew
                # while the drain never paused (checkpoints hold it near cloud.db's WAL_LIMIT_BYTES).
                wal = db.with_name(db.name + "-wal")
                wal_peak = (
                    wal.stat().st_size if cloud_kind != "trivial" and not pg_url and wal.exists() else None
                )
                cpu = {name: _cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
                cpu["gateway"] = time.process_time() - cpu0["gateway"]
                # The event loop's share of the cloud's CPU; the rest is mostly SQLite's (aiosqlite) thread.
                loop_s = _main_thread_cpu_s(pids["cloud"]) - loop0 if "cloud" in pids else None
                gw_task.cancel()
                streamed = await _console_received(watcher) if watcher else 0
                cloud.cancel()
            if cloud_kind == "trivial":
                stored = rows = n  # nothing is stored: this mode measures the gateway and broker only
            elif pg_url:
                stored, rows = await _pg_counts(settings)
            else:
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    stored = conn.execute("SELECT COUNT(DISTINCT id) FROM events").fetchone()[0]
                    rows = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        rate = n / elapsed
        where = {
            "process": "the cloud in its own process",
            "inline": "the cloud in the gateway's process",
            "trivial": "no cloud: an acker that stores nothing, in the gateway's process",
        }[cloud_kind]
        broker_where = (
            "Mosquitto, its own process" if broker_kind == "mosquitto" else "amqtt, in the gateway's process"
        )
        print(f"topology: gateway process; broker: {broker_where}; {where}{' on uvloop' if uvloop else ''}")
        print(f"store: {'postgresql' if pg_url else 'sqlite'}")
        if wal_peak is not None:
            print(f"cloud.db-wal high-water mark: {wal_peak / 2**20:.1f} MiB")
        if console:
            print(f"a console open on another estate ('elsewhere'): {streamed:,} events streamed to it")
        print(f"end to end: {n:,} events in {elapsed:.1f} s = {rate:,.0f} events/s (goal >= {GOAL_RATE:,})")
        print(
            f"raw paho QoS 1, same batches, no store: {raw_rate:,.0f} events/s; ratio {rate / raw_rate:.2f}"
        )
        print(f"cloud store: {stored:,} distinct events, {rows:,} rows (must both be {n:,})")
        shares = "; ".join(f"{name} {sec:.1f} s = {sec / n * 1e6:.0f} us/event" for name, sec in cpu.items())
        print(f"CPU during the drain: {shares}; wall {elapsed:.1f} s on {os.cpu_count()} cores")
        if loop_s is not None:
            print(f"cloud event loop thread: {loop_s:.1f} s = {loop_s / n * 1e6:.0f} us/event")
        if stored != n or rows != n:
            raise SystemExit("drain lost or duplicated events")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        nargs="?",
        const="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        help="store in PostgreSQL (a fresh schema, dropped afterwards) instead of SQLite",
    )
    parser.add_argument(
        "--broker",
        choices=["embedded", "mosquitto"],
        default=None,
        help="mosquitto (default when installed): its own process, as deployed; "
        "embedded: amqtt in this process",
    )
    parser.add_argument(
        "--cloud",
        choices=["process", "inline", "trivial"],
        default="process",
        help="process (default): the cloud in its own process, as deployed; inline: in this process, "
        "sharing its interpreter lock; trivial: an acker that stores nothing (the gateway's and broker's "
        "ceiling)",
    )
    parser.add_argument(
        "--profile-cloud",
        metavar="FILE",
        type=Path,
        help="with --cloud process: profile the cloud process with cProfile, stats written to FILE "
        "(python -m pstats FILE); its CPU figure then includes the profiler's overhead",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="with --cloud process: run the cloud process on uvloop's event loop (uvloop must be installed)",
    )
    parser.add_argument(
        "--console-elsewhere",
        action="store_true",
        help="an operator's console (live stream) open on another estate during the drain",
    )
    args = parser.parse_args()
    if args.uvloop and importlib.util.find_spec("uvloop") is None:
        parser.error("--uvloop needs uvloop, which is not a dependency: .venv/bin/pip install uvloop")
    if args.profile_cloud and args.cloud != "process":
        parser.error("--profile-cloud needs --cloud process")
    if args.uvloop and args.cloud != "process":
        parser.error("--uvloop needs --cloud process")
    configure_logging("ERROR")
    if args.broker is None:
        args.broker = "mosquitto" if shutil.which("mosquitto") else "embedded"
        if args.broker == "embedded":
            print("mosquitto is not installed: the embedded broker runs in the gateway's process")
    if args.broker == "mosquitto" and not shutil.which("mosquitto"):
        raise SystemExit("mosquitto is not installed")
    run = _run(
        args.events,
        args.broker,
        args.cloud,
        args.postgres,
        args.profile_cloud,
        uvloop=args.uvloop,
        console=args.console_elsewhere,
    )
    asyncio.run(run)


if __name__ == "__main__":
    main()
