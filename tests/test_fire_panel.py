"""Fire panel driver against the panel gateway simulator over real Modbus TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.base import Reading
from drivers.fire_panel import FirePanelDriver, decode_zone
from drivers.hub import TransportHub
from drivers.registry import create_driver
from simulators.fire_panel import FirePanelSimulator
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import ConfigError, parse_site_config


def _site(port: int, **options: object) -> dict:
    return {
        "site_id": "estate",
        "site_name": "Estate",
        "gateway_id": "gw",
        "devices": [
            {
                "id": "fire-1",
                "kind": "fire_panel",
                "poll_interval_s": 0.2,
                "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": 3},
                "options": {"zones": 8, "zone_names": {"3": "Block C lobby"}, **options},
            }
        ],
    }


@pytest.fixture
async def panel() -> AsyncIterator[tuple[FirePanelSimulator, FirePanelDriver]]:
    site = parse_site_config(_site(free_port()))

    async def emit(_: Reading) -> None:
        raise AssertionError("fire panel reports through poll()")

    async with run_site_simulators(site) as sims:
        hub = TransportHub()
        driver = create_driver(site.device("fire-1"), hub, emit)
        sim = sims["fire-1"]
        assert isinstance(sim, FirePanelSimulator)
        assert isinstance(driver, FirePanelDriver)
        try:
            yield sim, driver
        finally:
            await hub.close()


def test_zone_register_decoding() -> None:
    assert decode_zone(0x00FF) is None
    flags = decode_zone(0x2101)
    assert flags is not None
    assert flags["alarm"] is True
    assert flags["enabled"] is True
    assert flags["trouble"] is False


async def test_one_alarm_one_event_at_200ms_polling(
    panel: tuple[FirePanelSimulator, FirePanelDriver],
) -> None:
    sim, driver = panel
    assert await driver.poll() == []
    sim.alarm(3)
    seen: list[Reading] = []
    for _ in range(5):
        seen.extend(await driver.poll())
        await asyncio.sleep(0.2)
    assert [r.type for r in seen] == ["fire.alarm"]
    assert seen[0].data == {"zone": 3, "acknowledged": False, "zone_name": "Block C lobby"}
    assert driver.snapshot()["zones"] == {"3": ["alarm"]}
    sim.restore(3)
    restored = await driver.poll()
    assert [r.type for r in restored] == ["fire.restored"]
    assert restored[0].data["cleared"] == ["alarm"]
    assert await driver.poll() == []


async def test_prealarm_fault_and_panel_faults(panel: tuple[FirePanelSimulator, FirePanelDriver]) -> None:
    sim, driver = panel
    await driver.poll()
    sim.prealarm(1)
    sim.trouble(2)
    sim.panel("mains_fail")
    sim.unprogram(8)
    got = {(r.type, r.data.get("zone"), r.data.get("fault")) for r in await driver.poll()}
    assert got == {
        ("fire.prealarm", 1, None),
        ("fire.fault", 2, None),
        ("fire.panel_fault", None, "mains_fail"),
    }
    sim.alarm(1)  # pre-alarm escalates
    assert [r.type for r in await driver.poll()] == ["fire.alarm"]
    sim.panel("mains_fail", on=False)
    sim.reset()
    types = sorted(r.type for r in await driver.poll())
    assert types == ["fire.restored", "fire.restored", "fire.restored"]


async def test_alarm_present_at_start_is_reported(panel: tuple[FirePanelSimulator, FirePanelDriver]) -> None:
    sim, driver = panel
    sim.alarm(5)
    assert [(r.type, r.data["zone"]) for r in await driver.poll()] == [("fire.alarm", 5)]


def test_zone_names_must_name_real_zones() -> None:
    with pytest.raises(ConfigError, match="no zone 9"):
        parse_site_config(_site(1502, zone_names={"9": "Roof"}))
