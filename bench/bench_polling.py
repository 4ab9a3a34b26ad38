"""Polling throughput: our ModbusBus + SmartMeterDriver against a bare pymodbus loop, same devices, same run.

    .venv/bin/python -m bench.bench_polling [--devices 500] [--seconds 8] [--interval-seconds 6]

Simulated SDM120 meters (50 units per Modbus TCP server, like units behind gateways) run in a
child process so the figures below are the gateway side's alone. Each phase runs one task per
device against one connection per server (Modbus TCP gateways answer one request at a time):

(a) raw    ``AsyncModbusTcpClient.read_input_registers`` for the same coalesced blocks the meter
           table needs, no decoding, as fast as possible
(b) steward  ``SmartMeterDriver.poll()`` over the hub's ``ModbusBus`` (locking, retries policy,
           reply checks, decoding to readings), as fast as possible
(c) 1 s    every device polled by the driver on a 1 s schedule; a cycle is missed when a poll
           has not finished by the next tick

Goal: (b) >= 70% of (a) in devices/s, and no missed cycles in (c).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

UNITS_PER_SERVER = 50
MODEL = "sdm120"


# ---------------------------------------------------------------------- simulator process


def _serve(n_servers: int, units: list[int], conn: Connection) -> None:
    """Child process: host the meters until the parent says stop (or goes away)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_serve_async(n_servers, units, conn))


async def _serve_async(n_servers: int, units: list[int], conn: Connection) -> None:
    from simulators.modbus_server import ModbusSimServer
    from simulators.smart_meter import SmartMeterSimulator

    servers = [ModbusSimServer("127.0.0.1", 0) for _ in range(n_servers)]
    for server, count in zip(servers, units, strict=True):
        for unit in range(1, count + 1):
            SmartMeterSimulator(unit, model=MODEL, server=server)
    for server in servers:
        await server.start()
    conn.send([s.port for s in servers])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(conn.fileno(), stop.set)
    await stop.wait()
    for server in servers:
        await server.stop()


# ---------------------------------------------------------------------- measurement


@dataclass
class Result:
    name: str
    polls: int
    errors: int
    wall_s: float
    cpu_s: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.polls / self.wall_s

    def line(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return (
            f"{self.name:<8} {self.rate:7.0f} devices/s  {self.polls:6d} polls  {self.errors:3d} errors  "
            f"CPU {self.cpu_s:5.2f} s ({self.cpu_s / self.wall_s * 100:3.0f}% of a core, "
            f"{self.us_per_poll:4.0f} us/poll -> {self.capacity:5.0f} devices/s per core)  "
            f"latency p50 {p50:5.1f} ms p99 {p99:6.1f} ms"
        )

    @property
    def us_per_poll(self) -> float:
        return self.cpu_s / max(self.polls, 1) * 1e6

    @property
    def capacity(self) -> float:
        """Polls per second if the gateway side had a whole core (it is not the bottleneck here)."""
        return 1e6 / max(self.us_per_poll, 1e-9)


async def _flat_out(name: str, polls: list[Callable[[], Awaitable[Any]]], seconds: float) -> Result:
    """One task per device, each polling back to back until the deadline."""
    count = errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def run(poll: Callable[[], Awaitable[Any]]) -> None:
        nonlocal count, errors
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await poll()
            except Exception:
                errors += 1
                continue
            latencies.append(time.monotonic() - started)
            count += 1

    cpu0, wall0 = time.process_time(), time.monotonic()
    async with asyncio.timeout(seconds + 30), asyncio.TaskGroup() as tg:
        for poll in polls:
            tg.create_task(run(poll))
    return Result(name, count, errors, time.monotonic() - wall0, time.process_time() - cpu0, latencies)


async def _scheduled(
    polls: list[Callable[[], Awaitable[Any]]], seconds: float, interval: float
) -> dict[str, Any]:
    """Each device on a fixed ``interval`` schedule (starts staggered across one interval)."""
    cycles = missed = errors = 0
    latencies: list[float] = []
    start = time.monotonic() + 0.2
    end = start + seconds

    async def run(i: int, poll: Callable[[], Awaitable[Any]]) -> None:
        nonlocal cycles, missed, errors
        tick = start + interval * i / len(polls)
        while tick < end:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            began = time.monotonic()
            try:
                await poll()
            except Exception:
                errors += 1
            finished = time.monotonic()
            latencies.append(finished - began)
            cycles += 1
            next_tick = tick + interval
            if finished > next_tick:
                late = math.floor((finished - tick) / interval)
                missed += late
                next_tick = tick + (late + 1) * interval  # skip the ticks we ran over, as a supervisor would
            tick = next_tick

    cpu0 = time.process_time()
    async with asyncio.timeout(seconds + 30), asyncio.TaskGroup() as tg:
        for i, poll in enumerate(polls):
            tg.create_task(run(i, poll))
    lat = sorted(latencies) or [0.0]
    return {
        "cycles": cycles,
        "missed": missed,
        "errors": errors,
        "cpu_s": time.process_time() - cpu0,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "max_ms": lat[-1] * 1000,
    }


async def _bench(devices: int, seconds: float, interval_seconds: float) -> None:
    import logging

    import structlog
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.base import Reading
    from drivers.hub import TransportHub
    from drivers.meter_models import METER_MODELS
    from drivers.points import Point
    from drivers.registry import create_driver
    from drivers.transports.modbus import coalesce
    from steward.config import parse_site_config

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    n_servers = math.ceil(devices / UNITS_PER_SERVER)
    units = [min(UNITS_PER_SERVER, devices - i * UNITS_PER_SERVER) for i in range(n_servers)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(n_servers, units, child), daemon=True)
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, parent.poll, 60):
            raise RuntimeError("the simulator process did not start within 60 s")
        ports: list[int] = parent.recv()
        print(f"{devices} simulated {MODEL} meters on {n_servers} Modbus TCP servers (child process)")

        # (a) raw pymodbus: the same blocks the meter table coalesces into.
        points = [Point.model_validate(p) for p in METER_MODELS[MODEL]["points"]]
        tables = {p.table for p in points}
        blocks = [
            (table, block)
            for table in sorted(tables)
            for block in coalesce([(p.address, p.length) for p in points if p.table == table])
        ]
        print(f"each poll = {len(blocks)} request(s): {[(t, b.address, b.count) for t, b in blocks]}")
        clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0) for p in ports]
        for c in clients:
            await c.connect()

        def raw_poll(client: AsyncModbusTcpClient, unit: int) -> Callable[[], Awaitable[None]]:
            async def poll() -> None:
                for table, b in blocks:
                    read = client.read_input_registers if table == "input" else client.read_holding_registers
                    rr = await read(b.address, count=b.count, device_id=unit)
                    if rr.isError():
                        raise RuntimeError(str(rr))

            return poll

        raw_polls = [raw_poll(clients[s], u) for s in range(n_servers) for u in range(1, units[s] + 1)]
        await _flat_out("warm-up", raw_polls, 0.5)
        raw_first = await _flat_out("raw", raw_polls, seconds)

        # (b) the gateway's path: hub -> ModbusBus -> SmartMeterDriver.poll().
        site = parse_site_config(
            {
                "site_id": "bench",
                "site_name": "Bench",
                "gateway_id": "gw",
                "devices": [
                    {
                        "id": f"meter-{s}-{u}",
                        "kind": "smart_meter",
                        "model": MODEL,
                        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": ports[s], "unit": u},
                    }
                    for s in range(n_servers)
                    for u in range(1, units[s] + 1)
                ],
            }
        )
        hub = TransportHub()

        async def emit(_: Reading) -> None:
            pass

        drivers = [create_driver(dev, hub, emit) for dev in site.devices]
        ours = await _flat_out("steward", [d.poll for d in drivers], seconds)
        # raw again after ours, so warm-up or order effects on the simulator side cannot favour us.
        raw_again = await _flat_out("raw", raw_polls, seconds)
        raw = max(raw_first, raw_again, key=lambda r: r.rate)
        for c in clients:
            c.close()
        sched = await _scheduled([d.poll for d in drivers], interval_seconds, 1.0)
        errors = sum(bus.stats.errors for bus in hub.buses.values())
        await hub.close()
    finally:
        parent.send("stop")
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)
        if proc.is_alive():
            proc.terminate()

    print()
    print(raw_first.line())
    print(ours.line())
    print(raw_again.line())
    ratio = ours.rate / raw.rate
    verdict = "OK" if ratio >= 0.7 else "BELOW GOAL"
    print(f"throughput: steward = {ratio * 100:.0f}% of the better raw run (goal >= 70%): {verdict}")
    print(
        f"CPU efficiency: steward = {ours.capacity / raw.capacity * 100:.0f}% of raw per poll "
        f"({ours.us_per_poll:.0f} vs {raw.us_per_poll:.0f} us); the ratio that counts when the "
        f"gateway's CPU is the limit"
    )
    print()
    print(
        f"1 s interval, {devices} devices, {interval_seconds:g} s: {sched['cycles']} cycles, "
        f"{sched['missed']} missed, {sched['errors']} errors (bus errors {errors}); "
        f"CPU {sched['cpu_s']:.2f} s ({sched['cpu_s'] / interval_seconds * 100:.0f}% of one core); "
        f"poll latency p50 {sched['p50_ms']:.1f} ms p99 {sched['p99_ms']:.1f} ms max {sched['max_ms']:.1f} ms"
    )
    print(
        f"=> {devices} devices at 1 s: "
        + ("met, no missed cycles" if sched["missed"] == 0 and sched["errors"] == 0 else "NOT met")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=500, help="simulated meters (default 500)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each flat-out phase")
    parser.add_argument(
        "--interval-seconds", type=float, default=6.0, help="length of the 1 s-interval run (default 6)"
    )
    args = parser.parse_args()
    if args.devices < 1 or args.seconds <= 0 or args.interval_seconds <= 0:
        parser.error("--devices, --seconds and --interval-seconds must be positive")
    asyncio.run(_bench(args.devices, args.seconds, args.interval_seconds))


if __name__ == "__main__":
    main()
