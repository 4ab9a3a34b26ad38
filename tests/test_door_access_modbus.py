"""Door access over a Modbus I/O module: driver against the simulator over a real TCP socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers.base import ActionFailed, Reading
from drivers.door_access_modbus import ModbusDoorDriver
from drivers.hub import TransportHub
from drivers.registry import create_driver, validate_device_options
from drivers.wiegand import build_wiegand
from protocol.actions import validate_action
from simulators.door_access_modbus import ModbusDoorSimulator
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import ConfigError, SiteConfig, parse_site_config

HELD_OPEN = 0.3
EXIT_GRACE = 0.5


def _site(port: int, **options: object) -> SiteConfig:
    transport = {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5, "unit": 5}
    opts = {"held_open_s": HELD_OPEN, "exit_grace_s": EXIT_GRACE, "relock_grace_s": 0.1, **options}
    return parse_site_config(
        {
            "site_id": "estate",
            "site_name": "Estate",
            "gateway_id": "gw",
            "devices": [{"id": "door-lobby", "kind": "door_access", "transport": transport, "options": opts}],
        }
    )


@dataclass
class Rig:
    sim: ModbusDoorSimulator
    driver: ModbusDoorDriver
    emitted: list[Reading]
    emitted_event: asyncio.Event  # set when the driver emits on its own (the relock timer)

    async def poll(self) -> list[Reading]:
        readings = await self.driver.poll()
        self.emitted.extend(readings)
        return readings

    def types(self, readings: list[Reading] | None = None) -> list[str]:
        return [r.type for r in (self.emitted if readings is None else readings)]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    site = _site(free_port())
    emitted: list[Reading] = []
    emitted_event = asyncio.Event()

    async def emit(reading: Reading) -> None:
        emitted.append(reading)
        emitted_event.set()

    async with run_site_simulators(site) as sims:
        hub = TransportHub()
        driver = create_driver(site.device("door-lobby"), hub, emit)
        sim = sims["door-lobby"]
        assert isinstance(driver, ModbusDoorDriver)
        assert isinstance(sim, ModbusDoorSimulator)
        try:
            async with asyncio.timeout(10):
                assert await driver.poll() == []  # baseline
                yield Rig(sim, driver, emitted, emitted_event)
        finally:
            await driver.close()
            await hub.close()


async def _execute(rig: Rig, action: str, args: dict[str, object] | None = None) -> dict[str, object]:
    return await rig.driver.execute(action, validate_action("door_access", action, args or {}))


async def test_card_presented(rig: Rig) -> None:
    rig.sim.present_card(123, 4567)
    readings = await rig.poll()
    assert rig.types(readings) == ["access.presented"]
    assert readings[0].data == {
        "credential": "card",
        "card": "4567",
        "facility": 123,
        "card_number": "123-04567",
        "number": 123 * 65536 + 4567,
        "raw": 0x2F623AE,
        "bits": 26,
        "format": "wiegand26",
        "reader": "door-lobby",
    }
    assert await rig.poll() == []  # one presentation, one event
    rig.sim.present_card(0x1234, 0x5678, bits=34)
    (w34,) = await rig.poll()
    assert (w34.data["card_number"], w34.data["number"], w34.data["raw"]) == (
        "04660-22136",
        0x12345678,
        0x22468ACF1,
    )
    rig.sim.enter_pin(4711)
    (pin,) = await rig.poll()
    assert pin.data == {"credential": "pin", "pin": "4711", "reader": "door-lobby"}
    assert rig.driver.presentations == 3


async def test_bad_parity_is_a_read_error_not_a_presentation(rig: Rig) -> None:
    bad = build_wiegand(12, 345) ^ 1  # trailing parity bit flipped
    rig.sim.present_raw(bad, 26)
    readings = await rig.poll()
    assert rig.types(readings) == ["access.read_error"]
    assert readings[0].data["raw"] == bad
    assert readings[0].data["bits"] == 26
    assert "odd parity" in readings[0].data["reason"]
    rig.sim.present_raw(0x1, 30)  # a length the interface should never report
    assert rig.types(await rig.poll()) == ["access.read_error"]
    assert rig.driver.read_errors == 2
    assert rig.driver.presentations == 0
    assert rig.driver.snapshot()["read_errors"] == 2
    rig.sim.present_card(12, 345)  # the next good read still works
    assert rig.types(await rig.poll()) == ["access.presented"]


async def test_unlock_pulse_relocks_after_duration(rig: Rig) -> None:
    started = time.monotonic()
    state = await _execute(rig, "unlock", {"duration_s": 0.3})
    assert state["lock"] == "unlocked"
    assert rig.sim.released
    assert 0 < state["relock_in_s"] <= 0.3  # type: ignore[operator]
    rig.sim.open_door()  # a resident walks through while it is released: not forced
    assert rig.types(await rig.poll()) == ["door.opened"]
    assert rig.emitted[-1].data == {"forced": False}
    async with asyncio.timeout(2):
        await rig.sim.wait_relay(released=False)
    released_for = rig.sim.relay_history[-1][0] - rig.sim.relay_history[-2][0]
    assert [r for _, r in rig.sim.relay_history] == [True, False]
    assert 0.25 <= released_for < 1.0
    assert time.monotonic() - started >= 0.3
    await rig.poll()
    assert rig.driver.snapshot()["lock"] == "locked"


async def test_new_action_replaces_relock_timer(rig: Rig) -> None:
    await _execute(rig, "unlock", {"duration_s": 0.2})
    await _execute(rig, "unlock", {"duration_s": 0.6})  # extends: the first timer must not relock
    await asyncio.sleep(0.35)
    assert rig.sim.released
    await _execute(rig, "lock")
    assert not rig.sim.released
    await asyncio.sleep(0.4)
    assert [r for _, r in rig.sim.relay_history] == [True, False]  # no stray relock/unlock
    # close() cancels a pending relock timer without touching the relay.
    await _execute(rig, "unlock", {"duration_s": 5})
    await rig.driver.close()
    assert rig.sim.released and rig.driver.snapshot()["relock_in_s"] is None


async def test_open_while_locked_is_forced(rig: Rig) -> None:
    rig.sim.open_door()
    readings = await rig.poll()
    assert rig.types(readings) == ["door.opened", "door.forced_open"]
    assert readings[0].data == {"forced": True}
    rig.sim.close_door()
    assert rig.types(await rig.poll()) == ["door.closed"]


async def test_exit_button_then_open_is_not_forced(rig: Rig) -> None:
    rig.sim.press_exit(hold_s=0.01)
    await asyncio.sleep(0.05)  # released before the poll: the press counter still shows it
    assert rig.types(await rig.poll()) == []
    rig.sim.open_door()
    assert rig.types(await rig.poll()) == ["door.opened"]
    rig.sim.close_door()
    await rig.poll()
    await asyncio.sleep(EXIT_GRACE + 0.1)  # the press no longer covers a new opening
    rig.sim.open_door()
    assert "door.forced_open" in rig.types(await rig.poll())


async def test_held_open_reported_once(rig: Rig) -> None:
    await _execute(rig, "unlock", {"duration_s": 0.1})
    rig.sim.open_door()
    assert rig.types(await rig.poll()) == ["door.opened"]
    await asyncio.sleep(HELD_OPEN + 0.05)
    readings = await rig.poll()
    assert rig.types(readings) == ["door.held_open"]
    assert readings[0].data["limit_s"] == HELD_OPEN
    assert readings[0].data["open_s"] >= HELD_OPEN
    await asyncio.sleep(0.1)
    assert await rig.poll() == []  # once per opening
    rig.sim.close_door()
    assert rig.types(await rig.poll()) == ["door.closed"]


async def test_hold_unlocked_until_release(rig: Rig) -> None:
    state = await _execute(rig, "hold_unlocked")
    assert (state["lock"], state["mode"], state["relock_in_s"]) == ("unlocked", "held", None)
    rig.sim.open_door()
    assert rig.types(await rig.poll()) == ["door.opened"]
    await asyncio.sleep(HELD_OPEN + 0.05)
    assert await rig.poll() == []  # held unlocked: an open door is expected, not held_open
    assert rig.sim.released
    state = await _execute(rig, "release")
    assert (state["lock"], state["mode"]) == ("locked", "normal")
    assert not rig.sim.released


async def test_relay_that_does_not_follow_fails_the_action(rig: Rig) -> None:
    rig.sim.relay_fault = True
    with pytest.raises(ActionFailed, match=r"^door-lobby: lock relay did not follow"):
        await _execute(rig, "unlock", {"duration_s": 1})
    assert not rig.sim.released
    assert rig.driver.snapshot()["relock_in_s"] is None


async def test_unknown_action_and_options_checked(rig: Rig) -> None:
    with pytest.raises(ActionFailed, match="no action 'open'"):
        await rig.driver.execute("open", {})
    with pytest.raises(ConfigError, match=r"devices\[0\]\.options\.held_open: unknown option"):
        _site(1502, held_open=5)
    assert validate_device_options(_site(1502)) == []


async def test_failed_relock_is_retried_then_reported(rig: Rig) -> None:
    await _execute(rig, "unlock", {"duration_s": 0.05})
    rig.sim.relay_fault = True  # the relay sticks released
    async with asyncio.timeout(3):
        await rig.emitted_event.wait()
    assert rig.types() == ["door.relock_failed"]
    assert rig.sim.released
    assert "did not follow" in rig.emitted[-1].data["reason"]
    assert rig.driver.snapshot()["relock_in_s"] is None
    rig.sim.relay_fault = False
    assert (await _execute(rig, "lock"))["lock"] == "locked"
