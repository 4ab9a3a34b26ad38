"""Barrier gate driver against the gate simulator over a real Modbus TCP socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from cloud.state import state_updates
from drivers.barrier_gate import BarrierGateDriver
from drivers.base import ActionFailed, Reading
from drivers.hub import TransportHub
from drivers.registry import create_driver, validate_device_options
from edge.supervisor import DeviceSupervisor
from simulators.barrier_gate import BarrierGateSimulator
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import SiteConfig, parse_site_config

TRAVEL = 0.2


def _site(port: int, **options: object) -> SiteConfig:
    transport = {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5}
    opts = {"pulse_s": 0.02, "travel_timeout_s": 2.0, "confirm_interval_s": 0.02, **options}
    return parse_site_config(
        {
            "site_id": "estate",
            "site_name": "Estate",
            "gateway_id": "gw",
            "devices": [
                {
                    "id": "gate-north",
                    "kind": "barrier_gate",
                    "transport": {**transport, "unit": 1},
                    "options": opts,
                },
                {"id": "gate-south", "kind": "barrier_gate", "transport": {**transport, "unit": 2}},
            ],
        }
    )


@dataclass
class Rig:
    sim: BarrierGateSimulator
    other: BarrierGateSimulator
    driver: BarrierGateDriver
    emitted: list[Reading]

    def types(self, readings: list[Reading] | None = None) -> list[str]:
        return [r.type for r in (self.emitted if readings is None else readings)]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    site = _site(free_port())
    emitted: list[Reading] = []

    async def emit(reading: Reading) -> None:
        emitted.append(reading)

    async with run_site_simulators(site, travel_time_s=TRAVEL) as sims:
        hub = TransportHub()
        driver = create_driver(site.device("gate-north"), hub, emit)
        assert isinstance(driver, BarrierGateDriver)
        sim, other = sims["gate-north"], sims["gate-south"]
        assert isinstance(sim, BarrierGateSimulator)
        assert isinstance(other, BarrierGateSimulator)
        try:
            yield Rig(sim, other, driver, emitted)
        finally:
            await hub.close()


async def test_full_open_close_cycle(rig: Rig) -> None:
    assert rig.types(await rig.driver.poll()) == ["gate.state"]  # the first look: where it is
    assert rig.driver.snapshot()["state"] == "closed"

    state = await rig.driver.execute("open", {})
    assert state["state"] == "open"
    assert rig.sim.gate_state == "open"
    assert rig.types() == ["gate.opened"]
    assert await rig.driver.poll() == []  # already reported: one event per edge

    state = await rig.driver.execute("close", {})
    assert state["state"] == "closed"
    assert rig.types() == ["gate.opened", "gate.closed"]
    assert rig.sim.commands == ["open", "close"]
    assert rig.other.gate_state == "closed"  # its neighbour on the bus never moved


async def test_poll_reports_edges_once(rig: Rig) -> None:
    await rig.driver.poll()
    rig.sim.vehicle_arrives()
    readings = await rig.driver.poll()
    assert rig.types(readings) == ["gate.vehicle_detected"]
    assert readings[0].data == {"state": "closed", "loop_occupied": True}
    assert await rig.driver.poll() == []


async def test_vehicle_on_loop_refuses_close(rig: Rig) -> None:
    await rig.driver.execute("open", {})
    rig.sim.vehicle_arrives()
    with pytest.raises(ActionFailed, match="gate-north: vehicle on loop, refusing to close"):
        await rig.driver.execute("close", {})
    assert "gate.obstructed" in rig.types()
    assert rig.sim.gate_state == "open"
    rig.sim.vehicle_leaves()
    assert (await rig.driver.execute("close", {}))["state"] == "closed"


async def test_vehicle_arriving_while_closing_reverses(rig: Rig) -> None:
    await rig.driver.execute("open", {})
    closing = asyncio.create_task(rig.driver.execute("close", {}))
    await asyncio.sleep(TRAVEL / 2)
    rig.sim.vehicle_arrives()
    with pytest.raises(ActionFailed, match="gate reversed"):
        await closing
    assert "gate.obstructed" in rig.types()


async def test_fault_reported_and_open_refused(rig: Rig) -> None:
    await rig.driver.poll()
    rig.sim.fault()
    readings = await rig.driver.poll()
    assert rig.types(readings) == ["gate.fault"]
    assert readings[0].data["state"] == "fault"
    with pytest.raises(ActionFailed, match="motor fault"):
        await rig.driver.execute("open", {})
    rig.sim.clear_fault()
    assert (await rig.driver.execute("open", {}))["state"] == "open"


async def test_fault_during_travel_fails_the_action(rig: Rig) -> None:
    opening = asyncio.create_task(rig.driver.execute("open", {}))
    await asyncio.sleep(TRAVEL / 2)
    rig.sim.jam()
    with pytest.raises(ActionFailed, match="jammed"):
        await opening
    assert "gate.obstructed" in rig.types()


async def test_travel_timeout(rig: Rig) -> None:
    rig.sim.travel_time_s = 5
    rig.driver.options.travel_timeout_s = 0.3
    with pytest.raises(ActionFailed, match=r"did not reach open limit within 0\.3s"):
        await rig.driver.execute("open", {})


async def test_hold_open_blocks_close_until_release(rig: Rig) -> None:
    assert (await rig.driver.execute("hold_open", {}))["hold_open"] is True
    assert rig.sim.gate_state == "open"
    with pytest.raises(ActionFailed, match="held open"):
        await rig.driver.execute("close", {})
    await rig.driver.execute("release", {})
    assert (await rig.driver.execute("close", {}))["state"] == "closed"


async def test_stop_halts_mid_travel(rig: Rig) -> None:
    rig.sim.travel_time_s = 2
    opening = asyncio.create_task(rig.driver.execute("open", {}))
    await asyncio.sleep(0.1)
    state = await rig.driver.execute("stop", {})
    assert state["state"] == "moving"
    assert rig.sim.gate_state == "stopped"
    with pytest.raises(ActionFailed, match="interrupted"):
        await opening


async def test_polling_concurrently_with_actions_loses_no_edge(rig: Rig) -> None:
    polled: list[Reading] = []
    stop = asyncio.Event()

    async def poller() -> None:
        while not stop.is_set():
            polled.extend(await rig.driver.poll())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(poller())
    await rig.driver.execute("open", {})
    await rig.driver.execute("close", {})
    stop.set()
    await asyncio.wait_for(task, 2)
    all_types = rig.types(polled) + rig.types()
    # One position report, by whichever read first, and each edge once.
    assert sorted(all_types) == ["gate.closed", "gate.opened", "gate.state"]


async def test_bad_options_are_named() -> None:
    site = _site(free_port())
    bad = site.model_copy(deep=True)
    bad.devices[0].options = {"travel_timeout_s": -1, "nonsense": 1}
    problems = validate_device_options(bad)
    assert any("travel_timeout_s" in p for p in problems)
    assert any("nonsense: unknown option" in p for p in problems)


# ---------------------------------------------------------------------- position at start / after an outage


async def _until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.01)


async def test_first_poll_reports_where_the_gate_is(rig: Rig) -> None:
    readings = await rig.driver.poll()
    assert rig.types(readings) == ["gate.state"]
    assert readings[0].data == {"state": "closed", "loop_occupied": False}
    # The cloud's live-state merge turns it into the gate's position (what the console shows).
    assert state_updates("gate.state", readings[0].data) == {"gate": "closed"}
    assert await rig.driver.poll() == []  # reported once, not every poll


async def test_gate_already_open_at_start_is_not_reported_as_opening(rig: Rig) -> None:
    rig.sim.press_open()  # the guard opened it at the controller before the gateway started
    await _until(lambda: rig.sim.gate_state == "open", "open gate")
    rig.sim.vehicle_arrives()
    readings = await rig.driver.poll()
    # Where it is, not gate.opened (nobody saw it move) nor gate.vehicle_detected (no arrival seen).
    assert rig.types(readings) == ["gate.state"]
    assert readings[0].data == {"state": "open", "loop_occupied": True}
    assert state_updates("gate.state", readings[0].data) == {"gate": "open"}
    assert rig.driver.snapshot()["state"] == "open"


async def test_fault_present_at_start_is_reported_with_the_state(rig: Rig) -> None:
    rig.sim.fault()
    readings = await rig.driver.poll()
    assert rig.types(readings) == ["gate.state", "gate.fault"]
    assert readings[0].data["state"] == "fault"


async def test_first_read_by_an_action_reports_the_state_too(rig: Rig) -> None:
    await rig.driver.execute("open", {})
    assert rig.types() == ["gate.state", "gate.opened"]
    assert rig.emitted[0].data["state"] == "closed"


async def test_state_reported_again_after_the_gate_comes_back_online() -> None:
    """Through the real supervisor: offline, the gate moves meanwhile, back online -> its new position."""
    transport = {
        "type": "modbus_tcp",
        "host": "127.0.0.1",
        "port": free_port(),
        "timeout_s": 0.1,
        "retries": 0,
    }
    site = parse_site_config(
        {
            "site_id": "estate",
            "site_name": "Estate",
            "gateway_id": "gw",
            "devices": [
                {
                    "id": "gate-x",
                    "kind": "barrier_gate",
                    "transport": {**transport, "unit": 1},
                    "poll_interval_s": 0.05,
                }
            ],
        }
    )
    recorded: list[Reading] = []

    async def record(_: object, reading: Reading) -> None:
        recorded.append(reading)

    async def emit(reading: Reading) -> None:
        recorded.append(reading)

    def types() -> list[str]:
        return [r.type for r in recorded]

    async with run_site_simulators(site, travel_time_s=0.05) as sims:
        sim = sims["gate-x"]
        assert isinstance(sim, BarrierGateSimulator)
        hub = TransportHub()
        driver = create_driver(site.device("gate-x"), hub, emit)
        supervisor = DeviceSupervisor(driver, record, offline_after=2, max_backoff_s=0.1)
        task = asyncio.create_task(supervisor.run())
        try:
            await _until(lambda: "gate.state" in types(), "first gate.state")
            assert recorded[0].data["state"] == "closed"
            await asyncio.sleep(0.2)
            assert types() == ["gate.state"]  # steady polling adds nothing

            sim.server.unit(1).mode = "dead"
            await _until(lambda: "device.offline" in types(), "device.offline")
            sim.press_open()  # moved while the gateway could not see it
            await _until(lambda: sim.gate_state == "open", "gate open")
            sim.server.unit(1).mode = "ok"
            await _until(lambda: types().count("gate.state") == 2, "gate.state after the outage")

            after = types()[types().index("device.offline") + 1 :]
            assert after == ["device.online", "gate.state"]  # no gate.opened: nobody saw it move
            assert recorded[-1].data == {"state": "open", "loop_occupied": False}
            await asyncio.sleep(0.2)
            assert types().count("gate.state") == 2  # once per return, not every poll
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await task
            await hub.close()
