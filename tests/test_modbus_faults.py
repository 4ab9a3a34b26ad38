"""Faults on one bus stay on that bus; bad answers become named, counted protocol errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.base import DeviceProtocolError, DeviceUnreachable, Driver, Reading
from drivers.hub import TransportHub
from drivers.registry import create_driver
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import parse_site_config


def _site(port_a: int, port_b: int) -> dict:
    def gate(dev_id: str, port: int) -> dict:
        transport = {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.3, "retries": 1}
        return {"id": dev_id, "kind": "barrier_gate", "transport": transport}

    return {
        "site_id": "estate",
        "site_name": "Estate",
        "gateway_id": "gw",
        "devices": [gate("gate-a", port_a), gate("gate-b", port_b)],
    }


async def _noop(_: Reading) -> None:
    pass


async def test_dead_device_does_not_slow_another_bus() -> None:
    site = parse_site_config(_site(free_port(), free_port()))
    async with run_site_simulators(site) as sims:
        hub = TransportHub()
        a: Driver = create_driver(site.device("gate-a"), hub, _noop)
        b: Driver = create_driver(site.device("gate-b"), hub, _noop)
        failures: list[Exception] = []
        b_polls: list[float] = []

        async def poll_a() -> None:
            for _ in range(3):
                try:
                    await a.poll()
                except DeviceUnreachable as exc:
                    failures.append(exc)

        async def poll_b() -> None:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                started = time.monotonic()
                await b.poll()
                b_polls.append(time.monotonic() - started)
                await asyncio.sleep(0.1)

        await a.poll()
        sims["gate-a"].server.unit(1).mode = "dead"  # type: ignore[attr-defined]
        async with asyncio.timeout(10):
            await asyncio.gather(poll_a(), poll_b())
        await hub.close()
    assert len(failures) == 3
    assert all(str(f).startswith("gate-a: ") for f in failures)
    # 1.5 s at a 0.1 s interval is ~14 polls; a shared lock would have allowed ~2.
    assert len(b_polls) >= 10
    assert max(b_polls) < 0.1
    # The hub is closed but the counters live on in the bus objects.
    assert a.bus.stats.timeouts == 6  # type: ignore[attr-defined]  # 3 polls x (1 try + 1 retry)
    assert b.bus.stats.errors == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("mode", "reason"), [("exception", "exception 4"), ("garbage", "bad reply")])
async def test_bad_answers_are_protocol_errors(mode: str, reason: str) -> None:
    site = parse_site_config(_site(free_port(), free_port()))
    async with run_site_simulators(site, only={"gate-a"}) as sims:
        hub = TransportHub()
        a: Driver = create_driver(site.device("gate-a"), hub, _noop)
        sims["gate-a"].server.unit(1).mode = mode  # type: ignore[attr-defined]
        for _ in range(3):
            with pytest.raises(DeviceProtocolError, match=f"^gate-a: .*{reason}"):
                await a.poll()
        sims["gate-a"].server.unit(1).mode = "ok"  # type: ignore[attr-defined]
        # The driver carries on once the unit behaves; its first good read says where the gate is.
        assert [r.type for r in await a.poll()] == ["gate.state"]
        assert await a.poll() == []
        stats = a.bus.stats  # type: ignore[attr-defined]
        await hub.close()
    assert stats.protocol_errors == 3
    assert stats.timeouts == 0


async def test_a_driver_bug_costs_its_device_not_the_gateway() -> None:
    """An unexpected exception in poll() is a failed poll for that device; the supervisor goes on."""
    from edge.supervisor import DeviceSupervisor

    spec = _site(free_port(), free_port())
    for dev in spec["devices"]:
        dev["poll_interval_s"] = 0.05
    site = parse_site_config(spec)
    recorded: list[Reading] = []
    got_one = asyncio.Event()

    async def record(_: object, reading: Reading) -> None:
        recorded.append(reading)
        got_one.set()

    async with run_site_simulators(site, only={"gate-a"}):
        hub = TransportHub()
        a: Driver = create_driver(site.device("gate-a"), hub, _noop)
        real_poll = a.poll
        calls = 0

        async def buggy_poll() -> list[Reading]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError("a bug")
            return await real_poll()

        a.poll = buggy_poll  # type: ignore[method-assign]
        supervisor = DeviceSupervisor(a, record, max_backoff_s=0.1)
        task = asyncio.create_task(supervisor.run())
        try:
            async with asyncio.timeout(5):
                await got_one.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await hub.close()
    assert supervisor.health.errors == 1
    assert supervisor.health.polls >= 2
    assert [r.type for r in recorded] == ["gate.state"]  # the next poll worked
