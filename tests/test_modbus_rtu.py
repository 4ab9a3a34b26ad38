"""Modbus RTU end to end: the barrier gate driver and its simulator on the two ends of a pty link."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers.barrier_gate import BarrierGateDriver
from drivers.base import DeviceUnreachable, Reading
from drivers.hub import TransportHub
from drivers.registry import create_driver
from drivers.transports.modbus import ModbusBus
from simulators.barrier_gate import BarrierGateSimulator
from simulators.registry import run_site_simulators
from simulators.serial_pty import PtyLink, linked_ptys
from steward.config import ModbusRtuTransport, SiteConfig, parse_site_config

TRAVEL = 0.1


def _site(client_path: str) -> SiteConfig:
    transport = {
        "type": "modbus_rtu",
        "port": client_path,
        "baudrate": 115200,
        "timeout_s": 0.2,
        "retries": 1,
    }
    opts = {"pulse_s": 0.02, "travel_timeout_s": 2.0, "confirm_interval_s": 0.02}
    gate = {"id": "gate-rtu", "kind": "barrier_gate", "transport": {**transport, "unit": 3}, "options": opts}
    neighbour = {"id": "gate-rtu-2", "kind": "barrier_gate", "transport": {**transport, "unit": 4}}
    return parse_site_config(
        {"site_id": "estate", "site_name": "Estate", "gateway_id": "gw", "devices": [gate, neighbour]}
    )


@dataclass
class Rig:
    link: PtyLink
    sim: BarrierGateSimulator
    other: BarrierGateSimulator
    driver: BarrierGateDriver
    other_driver: BarrierGateDriver
    emitted: list[Reading]

    @property
    def bus(self) -> ModbusBus:
        return self.driver.bus


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    emitted: list[Reading] = []

    async def emit(reading: Reading) -> None:
        emitted.append(reading)

    async with PtyLink() as link:
        site = _site(link.client_path)
        ports = {link.client_path: link.server_path}
        async with run_site_simulators(site, travel_time_s=TRAVEL, rtu_server_ports=ports) as sims:
            hub = TransportHub()
            driver = create_driver(site.device("gate-rtu"), hub, emit)
            other_driver = create_driver(site.device("gate-rtu-2"), hub, emit)
            sim, other = sims["gate-rtu"], sims["gate-rtu-2"]
            assert isinstance(driver, BarrierGateDriver) and isinstance(other_driver, BarrierGateDriver)
            assert isinstance(sim, BarrierGateSimulator) and isinstance(other, BarrierGateSimulator)
            assert sim.server is other.server  # one RS-485 line, one server
            try:
                async with asyncio.timeout(15):
                    yield Rig(link, sim, other, driver, other_driver, emitted)
            finally:
                await hub.close()


async def test_reads_and_writes_over_rtu(rig: Rig) -> None:
    assert [r.type for r in await rig.driver.poll()] == ["gate.state"]  # where it starts
    assert rig.driver.snapshot()["state"] == "closed"
    state = await rig.driver.execute("open", {})
    assert state["state"] == "open"
    assert rig.sim.commands == ["open"]
    assert [r.type for r in rig.emitted] == ["gate.opened"]
    # Its neighbour on the same line answers with its own state.
    (first,) = await rig.other_driver.poll()
    assert (first.type, first.data["state"]) == ("gate.state", "closed")
    assert rig.other_driver.snapshot()["state"] == "closed"
    # Bytes really crossed the pty link both ways.
    assert rig.link.relayed["to_server"] > 0 and rig.link.relayed["to_client"] > 0
    assert rig.bus.key == f"rtu://{rig.link.client_path}"
    assert rig.bus.stats.errors == 0


async def test_silent_unit_is_unreachable_and_named(rig: Rig) -> None:
    await rig.driver.poll()
    rig.sim.server.unit(3).mode = "dead"
    started = time.monotonic()
    # pymodbus' reply timeout is the only timer on a request (ModbusBus adds none): it must fire.
    with pytest.raises(DeviceUnreachable, match=r"^gate-rtu: .*no answer from unit 3 on rtu://"):
        async with asyncio.timeout(5):
            await rig.driver.poll()
    assert time.monotonic() - started < 1.5  # two tries of 0.2 s and a 0.05 s backoff
    assert rig.bus.stats.timeouts == 2  # one try + one retry
    # The other unit on the line still answers, and the dead one recovers when it comes back.
    await rig.other_driver.poll()
    rig.sim.server.unit(3).mode = "ok"
    assert await rig.driver.poll() == []


@pytest.mark.parametrize("direction", ["to_client", "to_server"])
async def test_crc_error_is_retried(rig: Rig, direction: str) -> None:
    await rig.driver.poll()
    rig.sim.vehicle_arrives()
    rig.link.corrupt_next(direction)  # type: ignore[arg-type]
    readings = await rig.driver.poll()  # the corrupted frame is dropped; the retry gets through
    assert [r.type for r in readings] == ["gate.vehicle_detected"]
    assert rig.link.corrupted[direction] == 1  # type: ignore[index]
    assert rig.bus.stats.retries == 1
    assert rig.bus.stats.errors == 0


async def test_crc_errors_beyond_retries_fail_cleanly(rig: Rig) -> None:
    await rig.driver.poll()
    rig.link.corrupt_next("to_client", count=2)
    with pytest.raises(DeviceUnreachable, match=r"^gate-rtu: "):
        await rig.driver.poll()
    assert await rig.driver.poll() == []  # the line carries on


async def test_bus_without_a_far_end_is_unreachable() -> None:
    async with linked_ptys() as (_server_path, client_path):
        transport = ModbusRtuTransport(
            type="modbus_rtu", port=client_path, baudrate=115200, timeout_s=0.1, retries=0, unit=9
        )
        bus = ModbusBus(transport)
        try:
            with pytest.raises(DeviceUnreachable, match=r"^meter-9: .*no answer from unit 9"):
                async with asyncio.timeout(5):
                    await bus.read_holding(9, 0, 2, "meter-9")
        finally:
            await bus.close()
