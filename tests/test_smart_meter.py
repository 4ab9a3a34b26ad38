"""Smart meter driver: built-in tables and a generic table from options, against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import Reading
from drivers.hub import TransportHub
from drivers.registry import create_driver
from drivers.smart_meter import SmartMeterDriver
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from simulators.smart_meter import SmartMeterSimulator
from steward.config import ConfigError, SiteConfig, parse_site_config

GENERIC = {
    "points": [
        {
            "name": "energy_kwh",
            "table": "holding",
            "address": 10,
            "type": "uint32",
            "order": "CDAB",
            "scale": 0.01,
        },
        {"name": "power_w", "table": "holding", "address": 12, "type": "int16"},
    ]
}


def _site(port: int) -> SiteConfig:
    def dev(i: int, model: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        transport = {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": i}
        return {
            "id": f"m{i}",
            "kind": "smart_meter",
            "model": model,
            "transport": transport,
            "options": options or {},
        }

    return parse_site_config(
        {
            "site_id": "estate",
            "site_name": "Estate",
            "gateway_id": "gw",
            "devices": [
                dev(1, "sdm120"),
                dev(2, "sdm630"),
                dev(3, "ddsu666"),
                dev(4, "water_rs485"),
                dev(5, "generic", GENERIC),
            ],
        }
    )


@pytest.fixture
async def rig() -> AsyncIterator[
    tuple[dict[str, SmartMeterSimulator], dict[str, SmartMeterDriver], TransportHub]
]:
    site = _site(free_port())

    async def emit(_: Reading) -> None:
        pass

    async with run_site_simulators(site) as sims:
        hub = TransportHub()
        drivers = {d.id: create_driver(d, hub, emit) for d in site.devices}
        try:
            yield sims, drivers, hub  # type: ignore[misc]
        finally:
            await hub.close()


async def test_every_model_reads_in_common_units(rig: Any) -> None:
    sims, drivers, hub = rig
    sims["m1"].set("power_w", 1500.0)
    sims["m3"].set("power_w", 2200.0)  # the DDSU666 carries 2.2 kW on the wire
    assert sims["m3"].unit.get("input", 0x2004, 2) == [0x400C, 0xCCCD]
    readings = {dev: (await d.poll())[0] for dev, d in drivers.items()}
    assert {r.type for r in readings.values()} == {"meter.reading"}
    assert readings["m1"].data["values"]["power_w"] == pytest.approx(1500.0)
    assert readings["m1"].data["values"]["voltage_v"] == pytest.approx(230.0)
    assert readings["m2"].data["values"]["voltage_l3_v"] == pytest.approx(230.0)
    assert readings["m3"].data["values"]["power_w"] == pytest.approx(2200.0, rel=1e-5)
    assert readings["m4"].data["values"]["volume_forward_m3"] == pytest.approx(321.25)
    assert readings["m4"].data["status"] == {"empty_pipe": False, "valve_open": False, "magnet": False}
    assert readings["m5"].data["units"] == {"energy_kwh": "", "power_w": ""}
    # SDM120 points form three clusters (0x00-0x1F, 0x46-0x4B, 0x156): three reads, not eleven.
    before = hub.buses[drivers["m1"].bus.key].stats.requests
    await drivers["m1"].poll()
    assert hub.buses[drivers["m1"].bus.key].stats.requests - before == 3


async def test_generic_table_from_options(rig: Any) -> None:
    sims, drivers, _ = rig
    sims["m5"].set("energy_kwh", 123456.78)
    assert sims["m5"].unit.get("holding", 10, 2) == [0x614E, 0x00BC]  # low word first
    sims["m5"].set("power_w", -250)
    values = (await drivers["m5"].poll())[0].data["values"]
    assert values["energy_kwh"] == pytest.approx(123456.78)
    assert values["power_w"] == -250


async def test_water_meter_tamper(rig: Any) -> None:
    sims, drivers, _ = rig
    water = drivers["m4"]
    assert [r.type for r in await water.poll()] == ["meter.reading"]
    sims["m4"].add("volume_reverse_m3", 0.5)
    readings = await water.poll()
    assert [r.type for r in readings] == ["meter.reading", "meter.tamper"]
    assert readings[1].data["reason"] == "volume_reverse_m3 increased"
    sims["m4"].set_flag("magnet", True)
    sims["m4"].set_flag("empty_pipe", True)
    readings = await water.poll()
    assert [r.data.get("reason") for r in readings[1:]] == ["magnet"]
    assert readings[0].data["status"]["empty_pipe"] is True
    assert [r.type for r in await water.poll()] == ["meter.reading"]  # a steady bit is not news


def test_config_problems_are_named() -> None:
    site = _site(1502).model_dump(mode="json")
    site["devices"][0]["model"] = "sdm999"
    site["devices"][4]["options"] = {
        "points": [*GENERIC["points"], {"name": "x", "address": 11, "table": "holding"}]
    }
    site["devices"][3]["options"] = {"tamper_increase": ["nope"]}
    with pytest.raises(ConfigError) as err:
        parse_site_config(site)
    text = str(err.value)
    assert "unknown meter model 'sdm999'" in text
    assert "overlap at holding register 11" in text
    assert "no point 'nope'" in text
