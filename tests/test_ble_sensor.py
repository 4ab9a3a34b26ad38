"""BLE sensors end to end without a radio: simulator -> fake air -> bleak's public API (custom
backend) -> BleScanner -> BleSensorDriver -> emitted readings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from bleak import BleakScanner
from pydantic import ValidationError

from drivers.ble_sensor import BleSensorDriver, BleSensorOptions, Threshold, ThresholdTracker
from drivers.bthome import BTHOME_SERVICE_UUID
from drivers.hub import TransportHub
from drivers.transports.ble import BleError, BleScanner
from simulators.ble_sensor import BleSensorSimulator, FakeRadio, fake_backend_for
from simulators.door_access_mqtt import DoorControllerSimulator
from simulators.intercom import IntercomSimulator
from simulators.push import create_push_simulator
from steward.config import DeviceConfig, SiteConfig
from tests.push_fixtures import EventLog, listening

ADDRESS = "A4:C1:38:00:11:22"


def ble_device(address: str = ADDRESS, **options: object) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": "env-1",
            "kind": "ble_sensor",
            "transport": {"type": "ble", "address": address.lower()},
            "options": options,
        }
    )


@contextlib.asynccontextmanager
async def ble_rig(**options: object) -> AsyncIterator[tuple[BleSensorSimulator, BleSensorDriver, EventLog]]:
    radio = FakeRadio()
    dev = ble_device(**options)
    log = EventLog()
    sim = BleSensorSimulator(dev, radio, temperature=21.5, humidity=50.0, pressure=400.0)
    async with BleScanner(backend=radio.scanner_backend, client_backend=radio.client_backend) as scanner:
        driver = BleSensorDriver(dev, TransportHub(ble=scanner), log.emit)
        async with listening(driver):
            yield sim, driver, log


# ---- the fake backend through bleak's public API ------------------------------------------------------
async def test_fake_radio_speaks_through_bleak_scanner() -> None:
    radio = FakeRadio()
    heard: list[tuple[str, dict[str, bytes]]] = []
    scanner = BleakScanner(
        lambda d, a: heard.append((d.address, a.service_data)), backend=radio.scanner_backend
    )
    async with scanner:
        assert radio.listeners == 1
        radio.advertise(ADDRESS, service_data={BTHOME_SERVICE_UUID: b"\x40\x01\x61"}, rssi=-70)
    radio.advertise(ADDRESS, service_data={BTHOME_SERVICE_UUID: b"\x40\x01\x62"})  # after stop: unheard
    assert heard == [(ADDRESS, {BTHOME_SERVICE_UUID: b"\x40\x01\x61"})]
    assert scanner.discovered_devices_and_advertisement_data[ADDRESS][1].rssi == -70


async def test_scanner_is_passive_and_hears_only_bthome() -> None:
    radio = FakeRadio()
    scanner = BleScanner(backend=radio.scanner_backend)
    got: list[bytes] = []
    async with scanner:
        assert scanner.scanning_mode == "passive"
        scanner.register(ADDRESS.lower(), lambda ad: got.append(ad.service_data[BTHOME_SERVICE_UUID]))
        radio.advertise(ADDRESS, service_data={"0000181a-0000-1000-8000-00805f9b34fb": b"\x01"})
        radio.advertise(ADDRESS, service_data={BTHOME_SERVICE_UUID: b"\x40\x01\x61"})
        radio.advertise("11:22:33:44:55:66", service_data={BTHOME_SERVICE_UUID: b"\x40\x01\x10"})
    assert got == [b"\x40\x01\x61"]  # other service data filtered by the or-pattern, other address not routed
    assert scanner.received == 2


async def test_one_failing_callback_does_not_stop_the_others() -> None:
    radio = FakeRadio()
    got: list[str] = []

    def broken(ad: object) -> None:
        raise RuntimeError("driver bug")

    async with BleScanner(backend=radio.scanner_backend) as scanner:
        scanner.register(ADDRESS, broken)
        unregister = scanner.register(ADDRESS, lambda ad: got.append(ad.address))
        radio.advertise(ADDRESS, service_data={BTHOME_SERVICE_UUID: b"\x40"})
        unregister()
        radio.advertise(ADDRESS, service_data={BTHOME_SERVICE_UUID: b"\x40"})
    assert got == [ADDRESS]
    assert scanner.callback_errors == 2


async def test_gatt_read_and_write_through_bleak_client() -> None:
    radio = FakeRadio()
    lock_char = "0000fff1-0000-1000-8000-00805f9b34fb"
    peripheral = radio.add_peripheral("C0:FF:EE:00:00:01", {lock_char: b"\x00"})
    async with BleScanner(backend=radio.scanner_backend, client_backend=radio.client_backend) as scanner:
        async with scanner.connect("c0:ff:ee:00:00:01", timeout=2) as gatt:
            assert peripheral.connected
            assert await gatt.read(lock_char) == b"\x00"
            await gatt.write(lock_char, b"\x01")
            assert await gatt.read(lock_char) == b"\x01"
            with pytest.raises(BleError, match="read"):
                await gatt.read("0000aaaa-0000-1000-8000-00805f9b34fb")
        assert not peripheral.connected  # disconnected on leaving the block
        assert peripheral.writes == [(lock_char, b"\x01")]
        with pytest.raises(BleError, match="cannot connect"):
            async with scanner.connect("C0:FF:EE:00:00:99", timeout=1):
                pass


# ---- driver ------------------------------------------------------------------------------------------
async def test_advertisements_become_deduplicated_readings() -> None:
    async with ble_rig() as (sim, driver, log):
        sim.advertise_now()
        sim.advertise_now()  # the same packet again: sensors repeat themselves
        sim.set(temperature=22.25)
        sim.advertise_now()
        second = await log.wait_for("sensor.reading", count=2)
        first = log.of("sensor.reading")[0]
        assert first.data["values"] == {
            "battery": 95,
            "temperature": 21.5,
            "humidity": 50.0,
            "pressure": 400.0,
        }
        assert first.data["units"]["temperature"] == "°C"
        assert first.data["rssi"] == -62
        assert second.data["values"]["temperature"] == 22.25
        assert (first.data["packet_id"], second.data["packet_id"]) == (0, 1)
        assert len(log.of("sensor.reading")) == 2
        assert driver.snapshot()["duplicates"] == 1
        assert driver.snapshot()["values"]["temperature"] == 22.25


async def test_thresholds_with_hysteresis() -> None:
    options = {"thresholds": {"humidity": {"max": 80, "hysteresis": 2}, "pressure": {"min": 200, "max": 600}}}
    async with ble_rig(**options) as (sim, driver, log):
        readings = 0

        async def step(**values: float) -> None:
            nonlocal readings
            sim.set(**values)
            sim.advertise_now()
            readings += 1
            await log.wait_for("sensor.reading", count=readings)

        await step(humidity=70)
        await step(humidity=85)
        exceeded = log.of("sensor.threshold_exceeded")
        assert [e.data for e in exceeded] == [
            {"metric": "humidity", "value": 85.0, "bound": "max", "limit": 80.0}
        ]
        await step(humidity=79)  # inside the limit but within the hysteresis band: still high
        await step(humidity=81)  # no second exceeded while still high
        assert len(log.of("sensor.threshold_exceeded")) == 1
        assert not log.of("sensor.normal")
        await step(humidity=77.5)
        assert [e.data["metric"] for e in log.of("sensor.normal")] == ["humidity"]
        await step(pressure=150)
        low = log.of("sensor.threshold_exceeded")[-1]
        assert (low.data["metric"], low.data["bound"], low.data["limit"]) == ("pressure", "min", 200.0)
        await step(pressure=700)  # straight from too low to too high
        high = log.of("sensor.threshold_exceeded")[-1]
        assert (high.data["metric"], high.data["bound"]) == ("pressure", "max")
        assert driver.snapshot()["zones"] == {"humidity": "normal", "pressure": "high"}


async def test_garbage_and_foreign_advertisements_are_ignored() -> None:
    async with ble_rig() as (sim, driver, log):
        sim.advertise_raw(b"\x40\x02\xca")  # truncated temperature
        sim.advertise_raw(b"\x20\x01\x61")  # BTHome v1 device info
        sim.advertise_raw(b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14")  # encrypted
        sim.advertise_raw(b"\x01\x02", uuid="0000181a-0000-1000-8000-00805f9b34fb")  # not BTHome at all
        sim.radio.advertise("11:22:33:44:55:66", service_data={BTHOME_SERVICE_UUID: b"\x40\x01\x10"})
        sim.advertise_now()
        reading = await log.wait_for("sensor.reading")
        assert reading.data["values"]["battery"] == 95
        assert log.types == ["sensor.reading"]
        # the foreign UUID never reaches the driver (passive or-pattern); the other address is not routed
        assert driver.snapshot()["bad_packets"] == 3


async def test_simulator_runs_on_its_own_interval() -> None:
    radio = FakeRadio()
    dev = ble_device()
    log = EventLog()
    async with (
        BleScanner(backend=radio.scanner_backend) as scanner,
        listening(BleSensorDriver(dev, TransportHub(ble=scanner), log.emit)),
        BleSensorSimulator(dev, radio, interval_s=0.05) as sim,
    ):
        await log.wait_for("sensor.reading")
        sim.set(humidity=61)
        reading = await log.wait_for("sensor.reading", count=2)
        assert reading.data["values"]["humidity"] == 61.0
        assert sim.sent >= 2


def test_options_are_validated() -> None:
    assert BleSensorOptions.model_validate({"thresholds": {"temperature": {"max": 30}}})
    with pytest.raises(ValidationError, match="unknown metric"):
        BleSensorOptions.model_validate({"thresholds": {"humdity": {"max": 80}}})
    with pytest.raises(ValidationError, match="min, max or both"):
        BleSensorOptions.model_validate({"thresholds": {"humidity": {}}})
    with pytest.raises(ValidationError, match="below max"):
        BleSensorOptions.model_validate({"thresholds": {"humidity": {"min": 50, "max": 51}}})


def test_threshold_tracker_is_pure() -> None:
    tracker = ThresholdTracker("temperature", Threshold(max=30, hysteresis=0.5))
    assert tracker.update(29.9) is None
    exceeded = tracker.update(30.1)
    assert exceeded is not None
    assert exceeded.type == "sensor.threshold_exceeded"
    assert tracker.update(29.8) is None
    normal = tracker.update(29.5)
    assert normal is not None
    assert normal.type == "sensor.normal"


# ---- create_push_simulator ------------------------------------------------------------------------------
def test_create_push_simulator_picks_by_kind() -> None:
    site = SiteConfig.model_validate(
        {
            "site_id": "oak",
            "site_name": "Oak Court",
            "gateway_id": "gw-1",
            "device_broker_url": "mqtt://127.0.0.1:18830",
            "devices": [
                {
                    "id": "ic-1",
                    "kind": "video_intercom",
                    "transport": {"type": "mqtt", "topic_base": "d/ic-1"},
                },
                {
                    "id": "door-1",
                    "kind": "door_access",
                    "transport": {"type": "mqtt", "topic_base": "d/door-1"},
                },
                {"id": "env-1", "kind": "ble_sensor", "transport": {"type": "ble", "address": ADDRESS}},
                {
                    "id": "gate-1",
                    "kind": "barrier_gate",
                    "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": 15020},
                },
            ],
        }
    )
    intercom = create_push_simulator(site.device("ic-1"), site)
    assert isinstance(intercom, IntercomSimulator)
    assert (intercom.client.host, intercom.client.port) == ("127.0.0.1", 18830)
    assert isinstance(create_push_simulator(site.device("door-1"), site), DoorControllerSimulator)
    ble = create_push_simulator(site.device("env-1"), site)
    assert isinstance(ble, BleSensorSimulator)
    assert ble.radio is FakeRadio.default()
    with pytest.raises(LookupError, match="barrier_gate"):
        create_push_simulator(site.device("gate-1"), site)


async def test_demo_backend_hears_the_site_simulators() -> None:
    radio = FakeRadio()
    sim = BleSensorSimulator(ble_device(), radio)
    got: list[str] = []
    async with BleScanner(backend=fake_backend_for({"env-1": sim})) as scanner:
        scanner.register(ADDRESS, lambda ad: got.append(ad.address))
        sim.advertise_now()
    assert got == [ADDRESS]
    assert fake_backend_for({}) is FakeRadio.default().scanner_backend
