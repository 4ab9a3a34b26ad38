"""`steward commission` against the simulators on real sockets (and a linked pty pair for RTU).

The simulators run in an event loop on a background thread; the CLI runs in the test's thread
through Typer's CliRunner with its own ``asyncio.run``, exactly as an installer's shell would.
BLE goes through bleak's public API with the fake radio's backend, passed in via ``CommissionHooks``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from typer.testing import CliRunner

from drivers.bthome import BTHOME_SERVICE_UUID
from simulators.barrier_gate import BarrierGateSimulator
from simulators.ble_sensor import BleSensorSimulator, FakeRadio
from simulators.door_access_modbus import ModbusDoorSimulator
from simulators.fire_panel import FirePanelSimulator
from simulators.modbus_server import ModbusSimServer, SimUnit, free_port
from simulators.smart_meter import SmartMeterSimulator
from steward.commission import CommissionHooks, commission_app
from steward.commission._fingerprints import FINGERPRINTS, evaluate, identify
from steward.config import DeviceConfig, load_site_config

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

METERS = {1: "sdm120", 2: "sdm630", 3: "ddsu666", 4: "water_rs485"}
FIRE, GATE, DOOR, RANDOM, EXCEPTION, DEAD = 5, 6, 7, 8, 9, 10


class SimLoop:
    """An event loop on a thread, hosting simulators while the CLI runs in the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sims", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def inner() -> T:
            return fn()

        return self.run(inner())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Bus:
    """One simulated Modbus bus with every kind of unit a scan can meet."""

    def __init__(self, server: ModbusSimServer) -> None:
        self.server = server
        for unit, model in METERS.items():
            SmartMeterSimulator(unit, model=model, server=server)
        self.fire = FirePanelSimulator(FIRE, zones=8, server=server)
        self.gate = BarrierGateSimulator(GATE, server=server, travel_time_s=0.2)
        self.door = ModbusDoorSimulator(DOOR, server=server)
        # A unit that answers with registers that fit no fingerprint (someone else's device).
        rnd = random.Random(9)
        other = server.add_unit(SimUnit(RANDOM))
        for table in ("holding", "input"):
            other.set(table, 0, [rnd.randrange(65536) for _ in range(200)])
            other.set(table, 0x2000, [rnd.randrange(65536) for _ in range(16)])
        server.add_unit(SimUnit(EXCEPTION)).mode = "exception"
        server.add_unit(SimUnit(DEAD)).mode = "dead"  # on the bus, powered off


@pytest.fixture(scope="module")
def sims() -> Iterator[SimLoop]:
    # The simulators' logs must not land in the CLI's captured stdout (they share the process).
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__),
    )
    loop = SimLoop()
    yield loop
    loop.close()
    structlog.configure(**previous)


@pytest.fixture(scope="module")
def bus(sims: SimLoop) -> Iterator[Bus]:
    async def start() -> Bus:
        server = ModbusSimServer()
        b = Bus(server)
        await server.start()
        return b

    b = sims.run(start())
    yield b
    sims.run(b.gate.stop())
    sims.run(b.door.stop())
    sims.run(b.server.stop())


SITE = """\
# Test estate: comments must survive `commission add`.
site_id: test-estate
site_name: Test Estate
gateway_id: gw-test

devices:
  # Meters on the RS-485 line behind the TCP gateway.
  - id: meter-a
    kind: smart_meter
    model: sdm120
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 1, timeout_s: 0.3}}
  - id: meter-3p
    kind: smart_meter
    model: sdm630   # the switch room
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 2, timeout_s: 0.3}}
  - id: fire
    kind: fire_panel
    model: modbus-gateway
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 5, timeout_s: 0.3}}
    options: {{zones: 8, zone_names: {{"2": "Lobby"}}}}
  - id: gate-in
    kind: barrier_gate
    model: io-module
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 6, timeout_s: 0.3}}
    options: {{pulse_s: 0.05, confirm_interval_s: 0.05, travel_timeout_s: 5}}
  - id: door-b2
    kind: door_access
    model: io-module
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 7, timeout_s: 0.3}}
# End of devices.
"""


@pytest.fixture
def site(bus: Bus, tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(port=bus.server.port), encoding="utf-8")
    return path


def cli(*args: str, hooks: CommissionHooks | None = None, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(commission_app, list(args), obj=hooks, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# ---- fingerprints, pure ----------------------------------------------------------------------------
def test_fingerprints_from_literal_registers() -> None:
    # SDM120: 230 V (0x4366 0x0000) at input 0, 50 Hz (0x4248 0x0000) at 0x46, nothing at input 2.
    sdm120 = {
        ("input", 0x0000, 6): [0x4366, 0, 0, 0, 0, 0],
        ("input", 0x0000, 2): [0x4366, 0],
        ("input", 0x0002, 2): [0, 0],
        ("input", 0x0046, 2): [0x4248, 0],
    }
    match = identify(sdm120)
    assert match is not None and match.fingerprint.model == "sdm120"
    # 120 V is not a mains voltage here: the same table with 0x42F0 (120.0) is no SDM120.
    assert identify({**sdm120, ("input", 0x0000, 2): [0x42F0, 0]}) is None
    # Every fingerprint fails on a unit that refused every read.
    assert all(not evaluate(fp, {}).ok for fp in FINGERPRINTS)


# ---- scan modbus -----------------------------------------------------------------------------------
def test_scan_modbus_identifies_models_unknowns_and_silence(bus: Bus, site: Path, tmp_path: Path) -> None:
    saved = tmp_path / "scan.json"
    r = cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(bus.server.port),
        "--units",
        "1-12",
        "--timeout",
        "0.2",
        "--save",
        str(saved),
        "--config",
        str(site),
        "--installer",
        "Li Wei",
    )
    assert r.exit_code == 0, r.output
    lines = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") > 3}
    assert "Eastron SDM120" in lines["1"] and "smart_meter / sdm120" in lines["1"]
    assert "smart_meter / sdm630" in lines["2"]
    assert "smart_meter / ddsu666" in lines["3"]
    assert "smart_meter / water_rs485" in lines["4"]
    assert "fire_panel / modbus-gateway" in lines["5"] and "zones=8" in r.stdout
    assert "barrier_gate / io-module" in lines["6"]
    assert "door_access / io-module" in lines["7"]
    assert "unknown model" in lines["8"]
    assert "unknown model" in lines["9"] and "exception 4" in lines["9"]
    for unit in ("10", "11", "12"):
        assert "no answer" in lines[unit]
    assert "No answer from units: 10-12" in r.stdout
    assert "9 answered (7 recognised, 2 unknown model), 3 no answer" in r.stdout
    assert "12/12" in r.stderr  # the progress bar's final state

    doc = json.loads(saved.read_text())
    assert doc["bus"] == f"tcp://127.0.0.1:{bus.server.port}"
    assert doc["no_answer"] == [10, 11, 12]
    by_unit = {u["unit"]: u for u in doc["units"]}
    assert by_unit[5]["options"] == {"zones": 8}
    assert by_unit[8]["recognised"] is False
    log = json.loads((tmp_path / "site.yaml.commissioning.json").read_text())
    assert log["entries"][-1]["action"] == "scan_modbus" and log["entries"][-1]["installer"] == "Li Wei"


def test_scan_modbus_json_and_bad_options(bus: Bus) -> None:
    r = cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(bus.server.port),
        "--units",
        "1,8,11",
        "--json",
        "--timeout",
        "0.2",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [(u["unit"], u["model"]) for u in doc["units"]] == [(1, "sdm120"), (8, None)]
    assert doc["no_answer"] == [11]

    r = cli("scan", "modbus", "--units", "1-3")
    assert r.exit_code == 2 and "either --host" in r.stderr
    r = cli("scan", "modbus", "--host", "127.0.0.1", "--units", "9-2")
    assert r.exit_code == 2 and "runs backwards" in r.stderr
    assert "Traceback" not in r.output


def test_scan_modbus_nothing_listening() -> None:
    r = cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--units",
        "1-2",
        "--timeout",
        "0.1",
    )
    assert r.exit_code == 0, r.output
    assert "0 answered (0 recognised, 0 unknown model), 2 no answer" in r.stdout


def test_scan_modbus_rtu_over_linked_ptys(sims: SimLoop) -> None:
    serial_pty = pytest.importorskip("simulators.serial_pty")

    async def start() -> tuple[Any, ModbusSimServer]:
        link = serial_pty.PtyLink()
        await link.start()
        server = ModbusSimServer(serial=link.server_path, baudrate=19200)
        SmartMeterSimulator(2, model="ddsu666", server=server)
        await server.start()
        return link, server

    async def stop() -> None:
        await server.stop()
        await link.stop()

    link, server = sims.run(start())
    try:
        r = cli(
            "scan", "modbus", "--serial", link.client_path, "--baud", "19200", "--units", "1-3",
            "--timeout", "0.3", "--json",
        )  # fmt: skip
    finally:
        sims.run(stop())
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["bus"] == f"rtu://{link.client_path}"
    assert [(u["unit"], u["model"]) for u in doc["units"]] == [(2, "ddsu666")]
    assert doc["no_answer"] == [1, 3]


# ---- scan ble --------------------------------------------------------------------------------------
def _ble_device(address: str) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"id": "s-" + address[-2:], "kind": "ble_sensor", "transport": {"type": "ble", "address": address}}
    )


def ble_hooks(radio: FakeRadio, sensors: list[BleSensorSimulator]) -> CommissionHooks:
    """A scanner backend that, once scanning, hears the sensors and a phone (the fake air's timing)."""
    base = radio.scanner_backend

    class Backend(base):  # type: ignore[misc,valid-type]
        async def start(self) -> None:
            await super().start()
            loop = asyncio.get_running_loop()
            for sim in sensors:
                loop.call_soon(sim.advertise_now)
            loop.call_soon(
                lambda: radio.advertise(
                    "11:22:33:44:55:66", local_name="Phone", manufacturer_data={76: b"\x02"}
                )
            )
            loop.call_soon(
                lambda: radio.advertise(
                    "A4:C1:38:00:00:09", service_data={BTHOME_SERVICE_UUID: b"\x41\x00"}, rssi=-80
                )
            )

    return CommissionHooks(ble_backend=Backend)


def test_scan_ble_decodes_bthome_and_lists_others(tmp_path: Path) -> None:
    radio = FakeRadio()
    pump = BleSensorSimulator(
        _ble_device("A4:C1:38:00:00:01"), radio, temperature=18.25, humidity=71.0, rssi=-55
    )
    hooks = ble_hooks(radio, [pump])
    r = cli("scan", "ble", "--seconds", "0.3", hooks=hooks)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "A4:C1:38:00:00:01" in line)
    assert "-55 dBm" in row and "temperature=18.25" in row and "humidity=71.0" in row
    phone = next(line for line in r.stdout.splitlines() if "11:22:33:44:55:66" in line)
    assert "Phone" in phone and "not a BTHome sensor" in phone
    enc = next(line for line in r.stdout.splitlines() if "A4:C1:38:00:00:09" in line)
    assert "encrypted" in enc
    assert "3 device(s) heard, 2 BTHome sensor(s)" in r.stdout

    r = cli("scan", "ble", "--seconds", "0.3", "--json", hooks=hooks)
    doc = json.loads(r.stdout)
    values = {d["address"]: d["values"] for d in doc["devices"]}
    assert values["A4:C1:38:00:00:01"]["temperature"] == 18.25


# ---- probe -----------------------------------------------------------------------------------------
def test_probe_meter_shows_raw_and_scaled(site: Path) -> None:
    r = cli("probe", "meter-a", "--config", str(site), "--installer", "Li Wei")
    assert r.exit_code == 0, r.output
    voltage = next(line for line in r.stdout.splitlines() if "voltage_v" in line)
    assert "0x4366 0x0000" in voltage and "230.0" in voltage and "input 0 (float32 ABCD)" in voltage
    assert "frequency_hz" in r.stdout and "50.0" in r.stdout
    assert "OK: 10 point(s) read" in r.stdout

    r = cli("probe", "meter-3p", "--config", str(site), "--json")
    doc = json.loads(r.stdout)
    points = {p["point"]: p for p in doc["points"]}
    assert doc["ok"] is True and points["voltage_l3_v"]["value"] == 230.0
    assert points["power_w"]["raw"].startswith("0x")


def test_probe_fire_panel_decodes_zone_flags(bus: Bus, site: Path) -> None:
    # Simulator state is plain data; setting it from the test thread between CLI runs is safe.
    bus.fire.alarm(2)
    try:
        r = cli("probe", "fire", "--config", str(site))
    finally:
        bus.fire.restore(2)
    assert r.exit_code == 0, r.output
    zone2 = next(line for line in r.stdout.splitlines() if "zone_2" in line)
    assert "(Lobby)" in zone2 and "alarm" in zone2 and "0x2501" in zone2
    assert "panel_status" in r.stdout and "normal" in r.stdout


def test_probe_unknown_device_and_dead_device(site: Path, tmp_path: Path, bus: Bus) -> None:
    r = cli("probe", "nope", "--config", str(site))
    assert r.exit_code == 2 and "no device 'nope'; configured: meter-a" in r.stderr
    dead = tmp_path / "dead.yaml"
    dead.write_text(
        SITE.format(port=bus.server.port).replace("unit: 1, timeout_s: 0.3", f"unit: {DEAD}, timeout_s: 0.2"),
        encoding="utf-8",
    )
    r = cli("probe", "meter-a", "--config", str(dead), "--timeout", "0.2")
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and f"no answer from unit {DEAD}" in r.stdout
    assert "Traceback" not in r.output


# ---- test (one action) -----------------------------------------------------------------------------
def test_open_gate_reports_before_and_after(bus: Bus, site: Path, tmp_path: Path) -> None:
    r = cli("test", "gate-in", "open", "--config", str(site), "--installer", "Li Wei")
    assert r.exit_code == 0, r.output
    state = next(line for line in r.stdout.splitlines() if line.startswith("│ state"))
    assert "closed" in state and "open" in state
    assert "Device reported: gate.opened" in r.stdout
    assert "OK: open: state closed -> open" in r.stdout
    assert bus.gate.commands[-1] == "open"

    r = cli("test", "gate-in", "close", "--config", str(site), "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["before"]["state"] == "open" and doc["after"]["state"] == "closed"
    assert "gate.closed" in doc["events"]


def test_gate_fault_fails_the_action(bus: Bus, site: Path) -> None:
    bus.gate.fault()
    try:
        r = cli("test", "gate-in", "open", "--config", str(site))
    finally:
        bus.gate.clear_fault()
        bus.gate.unit.set("discrete", 0, [False, True, False, False, False])  # back at the closed limit
    assert r.exit_code == 1
    assert "FAIL: open FAILED: motor fault, cannot open" in r.stdout


def test_unlock_door_relocks(bus: Bus, site: Path) -> None:
    r = cli("test", "door-b2", "unlock", "--arg", "duration_s=0.3", "--config", str(site))
    assert r.exit_code == 0, r.output
    lock = next(line for line in r.stdout.splitlines() if line.startswith("│ lock"))
    assert [cell.strip() for cell in lock.split("│")[2:5]] == ["locked", "unlocked", "locked"]
    assert "OK: unlock: lock locked -> unlocked" in r.stdout and "then locked again" in r.stdout
    assert [released for _, released in bus.door.relay_history[-2:]] == [True, False]


def test_action_not_allowed(site: Path) -> None:
    r = cli("test", "gate-in", "unlock", "--config", str(site))
    assert r.exit_code == 2
    assert "barrier_gate has no action 'unlock'; allowed: close, hold_open, open, release, stop" in r.stderr
    r = cli("test", "meter-a", "open", "--config", str(site))
    assert r.exit_code == 2 and "none (this device only reports)" in r.stderr


# ---- add -------------------------------------------------------------------------------------------
def test_add_from_scan_keeps_comments_and_rejects_a_clash(bus: Bus, site: Path, tmp_path: Path) -> None:
    saved = tmp_path / "scan.json"
    r = cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(bus.server.port),
        "--units",
        "3-4",
        "--timeout",
        "0.2",
        "--save",
        str(saved),
    )
    assert r.exit_code == 0, r.output
    before = site.read_text(encoding="utf-8")

    r = cli(
        "add",
        "--config",
        str(site),
        "--from-scan",
        str(saved),
        "--unit",
        "3",
        "--id",
        "meter-1203",
        "--name",
        "Apartment 1203 (公寓)",
    )
    assert r.exit_code == 0, r.output
    assert "Added meter-1203 (smart_meter, ddsu666)" in r.stdout
    after = site.read_text(encoding="utf-8")
    head = before.partition("# End of devices.\n")[0]
    assert after.startswith(head) and after.endswith("# End of devices.\n")  # every original byte kept
    assert "model: sdm630   # the switch room" in after
    added = after[len(head) :]
    assert "  - id: meter-1203\n    kind: smart_meter\n    model: ddsu666\n" in added
    assert f"transport: {{type: modbus_tcp, host: 127.0.0.1, port: {bus.server.port}, unit: 3}}" in added
    assert load_site_config(site).device("meter-1203").model == "ddsu666"

    # Hand-typed, on an address already taken: the loader's own message, file untouched.
    r = cli(
        "add",
        "--config",
        str(site),
        "--id",
        "meter-x",
        "--kind",
        "smart_meter",
        "--model",
        "sdm120",
        "--host",
        "127.0.0.1",
        "--port",
        str(bus.server.port),
        "--unit",
        "1",
    )
    assert r.exit_code == 2
    assert "devices 'meter-a' and 'meter-x' share unit 1 on bus" in r.stderr
    r = cli(
        "add",
        "--config",
        str(site),
        "--id",
        "meter-a",
        "--kind",
        "smart_meter",
        "--model",
        "sdm120",
        "--host",
        "127.0.0.1",
        "--port",
        str(bus.server.port),
        "--unit",
        "42",
    )
    assert r.exit_code == 2 and "duplicate device id 'meter-a'" in r.stderr
    r = cli("add", "--config", str(site), "--from-scan", str(saved), "--unit", "1", "--id", "x")
    assert r.exit_code == 2 and "unit 1 did not answer in that scan" in r.stderr
    assert site.read_text(encoding="utf-8") == after


def test_add_unknown_model_is_refused_by_the_loader(site: Path) -> None:
    r = cli(
        "add",
        "--config",
        str(site),
        "--id",
        "m9",
        "--kind",
        "smart_meter",
        "--model",
        "sdm999",
        "--host",
        "10.0.0.9",
        "--unit",
        "9",
    )
    assert r.exit_code == 2 and "unknown meter model 'sdm999'" in r.stderr


def test_add_to_the_demo_config_changes_nothing_else(tmp_path: Path) -> None:
    demo = tmp_path / "demo-site.yaml"
    shutil.copy(Path(__file__).parents[1] / "config" / "demo-site.yaml", demo)
    before = demo.read_text(encoding="utf-8")
    r = cli(
        "add",
        "--config",
        str(demo),
        "--id",
        "gate-west",
        "--kind",
        "barrier_gate",
        "--model",
        "io-module",
        "--host",
        "127.0.0.1",
        "--port",
        "15020",
        "--unit",
        "3",
        "--option",
        "pulse_s=0.5",
    )
    assert r.exit_code == 0, r.output
    after = demo.read_text(encoding="utf-8")
    added = (
        "  - id: gate-west\n    kind: barrier_gate\n    model: io-module\n"
        "    transport: {type: modbus_tcp, host: 127.0.0.1, port: 15020, unit: 3}\n"
        "    options:\n      pulse_s: 0.5\n"
    )
    # Inserted as the last device, before the sections that follow the device list; nothing else moves.
    assert after.count(added) == 1
    assert after.replace(added, "", 1) == before
    assert after.index(added) < after.index("fire_linkage:")
    assert after.index("A4:C1:38:00:00:02") < after.index(added)


# ---- config check ----------------------------------------------------------------------------------
def test_config_check_live_passes(site: Path) -> None:
    r = cli("config", "check", "--config", str(site), "--live", "--installer", "Li Wei")
    assert r.exit_code == 0, r.output
    assert "OK:" in r.stdout and "FAIL" not in r.stdout
    model = next(line for line in r.stdout.splitlines() if "meter-3p" in line and "model" in line)
    assert "pass" in model and "looks like Eastron SDM630" in model


def test_config_check_live_fails_on_a_dead_device(bus: Bus, tmp_path: Path) -> None:
    closed_port = free_port()
    text = SITE.format(port=bus.server.port)
    text = text.replace(f"port: {bus.server.port}, unit: 7", f"port: {bus.server.port}, unit: {DEAD}")
    text = text.replace(f"port: {bus.server.port}, unit: 1,", f"port: {closed_port}, unit: 1,")
    # Configured as an SDM120 but the unit is the three-phase meter.
    text = text.replace("model: sdm630   # the switch room", "model: sdm120   # wrong on purpose")
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    r = cli("config", "check", "--config", str(path), "--live", "--timeout", "0.2")
    assert r.exit_code == 1, r.output
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]

    def row(device: str, check: str) -> str:
        return next(
            line for line in rows if line.split("│")[1].strip() == device and check in line.split("│")[2]
        )

    assert "FAIL" in row("meter-a", "reachable") and f"127.0.0.1:{closed_port}" in row("meter-a", "reachable")
    assert "FAIL" in row("door-b2", "answers") and f"no answer from unit {DEAD}" in row("door-b2", "answers")
    assert "FAIL" in row("meter-3p", "model") and "looks like sdm630" in row("meter-3p", "model")
    assert "pass" in row("gate-in", "answers")
    assert "FAILED: 3 check(s) on door-b2, meter-3p, meter-a" in r.stdout

    r = cli("config", "check", "--config", str(path), "--live", "--timeout", "0.2", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert {(c["device_id"], c["check"]) for c in doc["checks"] if c["result"] == "fail"} == {
        ("meter-a", "reachable"),
        ("door-b2", "answers"),
        ("meter-3p", "model"),
    }


def test_config_check_without_live_and_broken_file(site: Path, tmp_path: Path) -> None:
    r = cli("config", "check", "--config", str(site))
    assert r.exit_code == 0 and "OK: 5 check(s)" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(site.read_text().replace("kind: fire_panel", "kind: fire_pannel"), encoding="utf-8")
    r = cli("config", "check", "--config", str(bad))
    assert r.exit_code == 1 and "devices[2].kind" in r.stdout


def test_config_check_live_ble(tmp_path: Path) -> None:
    radio = FakeRadio()
    heard = BleSensorSimulator(_ble_device("A4:C1:38:00:00:01"), radio)
    path = tmp_path / "ble.yaml"
    path.write_text(
        "site_id: s\nsite_name: S\ngateway_id: g\ndevices:\n"
        "  - {id: pump, kind: ble_sensor, transport: {type: ble, address: 'A4:C1:38:00:00:01'}}\n"
        "  - {id: roof, kind: ble_sensor, transport: {type: ble, address: 'A4:C1:38:00:00:07'}}\n",
        encoding="utf-8",
    )
    r = cli(
        "config",
        "check",
        "--config",
        str(path),
        "--live",
        "--ble-seconds",
        "0.3",
        hooks=ble_hooks(radio, [heard]),
    )
    assert r.exit_code == 1, r.output
    pump = next(line for line in r.stdout.splitlines() if "pump" in line and "heard" in line)
    roof = next(line for line in r.stdout.splitlines() if "roof" in line and "heard" in line)
    assert "pass" in pump and "temperature=21.5" in pump
    assert "FAIL" in roof and "nothing heard in 0.3 s" in roof


# ---- report ----------------------------------------------------------------------------------------
def test_report_collects_the_log(bus: Bus, site: Path, tmp_path: Path) -> None:
    env = {"STEWARD_INSTALLER": "Zhang San"}
    assert (
        cli(
            "scan",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(bus.server.port),
            "--units",
            "1-2",
            "--timeout",
            "0.2",
            "--config",
            str(site),
            env=env,
        ).exit_code
        == 0
    )
    assert cli("probe", "meter-a", "--config", str(site), env=env).exit_code == 0
    assert cli("probe", "gate-in", "--config", str(site), env=env).exit_code == 0
    assert cli("test", "gate-in", "open", "--config", str(site), env=env).exit_code == 0
    assert cli("test", "gate-in", "close", "--config", str(site), env=env).exit_code == 0

    r = cli("report", "--config", str(site), "--installer", "Zhang San")
    assert r.exit_code == 0, r.output
    assert "2/5 device(s) complete" in r.stdout
    data = json.loads((tmp_path / "site.commissioning-report.json").read_text())
    devices = {d["id"]: d for d in data["devices"]}
    assert devices["meter-a"]["complete"] and devices["meter-a"]["found"]["model"] == "sdm120"
    assert devices["meter-a"]["probed"]["installer"] == "Zhang San"
    assert devices["gate-in"]["complete"] and [t["test"] for t in devices["gate-in"]["tests"]] == [
        "open",
        "close",
    ]
    assert devices["door-b2"]["missing"] == ["probe", "action test"]
    assert devices["fire"]["found"] is None and devices["fire"]["missing"] == ["probe"]
    assert data["complete"] is False and data["registered"] is None
    md = (tmp_path / "site.commissioning-report.md").read_text()
    assert "# Commissioning report — Test Estate (test-estate)" in md
    assert "| meter-a | smart_meter / sdm120 |" in md and "Installer: Zhang San" in md


def test_probe_ble_sensor(tmp_path: Path) -> None:
    radio = FakeRadio()
    sensor = BleSensorSimulator(_ble_device("A4:C1:38:00:00:01"), radio, humidity=63.5)
    path = tmp_path / "ble.yaml"
    path.write_text(
        "site_id: s\nsite_name: S\ngateway_id: g\ndevices:\n"
        "  - {id: pump, kind: ble_sensor, transport: {type: ble, address: 'a4:c1:38:00:00:01'}}\n",
        encoding="utf-8",
    )
    r = cli(
        "probe", "pump", "--config", str(path), "--seconds", "2", "--json", hooks=ble_hooks(radio, [sensor])
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {p["point"]: p["value"] for p in doc["points"]}["humidity"] == 63.5
    assert doc["elapsed_s"] < 1.5  # stops listening once the sensor was heard


def test_module_entry_point_runs_without_a_traceback(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("site_id: [oops\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "steward.commission", "config", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "not valid YAML at line" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
