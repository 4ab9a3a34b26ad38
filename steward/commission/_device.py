"""One configured device at a time: read every point raw and scaled, perform one action, check it live.

Probing reads the registers itself (to show the raw words next to the values) and then lets the
device's own driver poll once, so the state shown is what the gateway will report. Actions go
through the driver, exactly as a command from the cloud would.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.scanner import BaseBleakScanner

from drivers import barrier_gate as gate
from drivers.base import ActionFailed, DriverError, Reading
from drivers.fire_panel import PANEL_BITS, FirePanelOptions, decode_zone
from drivers.hub import TransportHub
from drivers.meter_models import METER_MODELS
from drivers.points import Point
from drivers.registry import create_driver
from drivers.smart_meter import SmartMeterOptions
from drivers.transports import codec
from drivers.transports.modbus import ModbusBus
from protocol.actions import ActionNotAllowed, validate_action
from steward.commission._ble import BleScanError, scan_ble
from steward.commission._fingerprints import all_reads
from steward.commission._modbus import check_model, read_fingerprint_values
from steward.config import (
    BleTransport,
    DeviceConfig,
    ModbusRtuTransport,
    ModbusTcpTransport,
    SiteConfig,
)

__all__ = [
    "ActionResult",
    "CheckRow",
    "CommissionError",
    "ProbeResult",
    "ProbeRow",
    "live_check",
    "probe_device",
    "run_action",
]


class CommissionError(Exception):
    """Something the installer must fix (unsupported device, bad action); the message says what."""


@dataclass(slots=True)
class ProbeRow:
    point: str
    where: str
    raw: str
    value: Any
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "where": self.where,
            "raw": self.raw,
            "value": self.value,
            "unit": self.unit,
        }


@dataclass(slots=True)
class ProbeResult:
    device: DeviceConfig
    ok: bool
    rows: list[ProbeRow] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device.id,
            "kind": self.device.kind,
            "model": self.device.model,
            "ok": self.ok,
            "error": self.error,
            "points": [r.as_dict() for r in self.rows],
            "state": self.state,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _hex(regs: list[int]) -> str:
    return " ".join(f"0x{r:04X}" for r in regs)


def _modbus(dev: DeviceConfig) -> ModbusTcpTransport | ModbusRtuTransport:
    t = dev.transport
    if not isinstance(t, ModbusTcpTransport | ModbusRtuTransport):
        raise CommissionError(f"{dev.id}: {dev.kind} over {t.type} is not probed by this tool yet")
    return t


def with_timeout(dev: DeviceConfig, timeout_s: float | None) -> DeviceConfig:
    """The device with a shorter per-request timeout and no retries (for quick live checks)."""
    if timeout_s is None or not isinstance(dev.transport, ModbusTcpTransport | ModbusRtuTransport):
        return dev
    transport = dev.transport.model_copy(update={"timeout_s": timeout_s, "retries": 0})
    return dev.model_copy(update={"transport": transport})


# ---- raw rows per kind -----------------------------------------------------------------------------
async def _meter_rows(bus: ModbusBus, dev: DeviceConfig, unit: int) -> list[ProbeRow]:
    options = SmartMeterOptions.model_validate(dev.options)
    if dev.model != "generic":
        table = METER_MODELS[dev.model]
        options = SmartMeterOptions.model_validate({"points": table["points"], "status": table.get("status")})
    points, status = list(options.points), options.status
    rows: list[ProbeRow] = []
    by_table: dict[str, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table_name, pts in by_table.items():
        raw = await bus.read_table(
            table_name,  # type: ignore[arg-type]
            unit,
            [(p.address, p.length) for p in pts],
            dev.id,
        )
        for p in pts:
            regs = [int(raw[a]) for a in range(p.address, p.address + p.length)]
            try:
                value: Any = codec.decode(regs, p.type, p.order, p.scale, p.offset)
                if isinstance(value, float):
                    value = round(value, 4)
            except codec.CodecError as exc:
                value = f"undecodable: {exc}"
            where = f"{p.table} {p.address} ({p.type} {p.order}" + (
                f" ×{p.scale:g})" if p.scale != 1 else ")"
            )
            rows.append(ProbeRow(p.name, where, _hex(regs), value, p.unit))
    if status is not None:
        reader = bus.read_holding if status.table == "holding" else bus.read_input
        (raw_status,) = await reader(unit, status.address, 1, dev.id)
        on = [name for bit, name in status.bits.items() if codec.get_bit(raw_status, bit)]
        rows.append(
            ProbeRow(
                "status", f"{status.table} {status.address}", _hex([raw_status]), ", ".join(on) or "none"
            )
        )
    return rows


_GATE_INPUTS = ["open_limit", "closed_limit", "vehicle_loop", "motor_fault", "obstructed"]
_GATE_COILS = ["open_pulse", "close_pulse", "stop_pulse", "hold_open_latch"]


async def _gate_rows(bus: ModbusBus, dev: DeviceConfig, unit: int) -> list[ProbeRow]:
    inputs = await bus.read_discrete(unit, 0, gate.DI_COUNT, dev.id)
    coils = await bus.read_coils(unit, 0, len(_GATE_COILS), dev.id)
    rows = [
        ProbeRow(n, f"discrete {i}", str(int(v)), bool(v))
        for i, (n, v) in enumerate(zip(_GATE_INPUTS, inputs, strict=True))
    ]
    rows += [
        ProbeRow(n, f"coil {i}", str(int(v)), bool(v))
        for i, (n, v) in enumerate(zip(_GATE_COILS, coils, strict=True))
    ]
    return rows


async def _door_rows(bus: ModbusBus, dev: DeviceConfig, unit: int) -> list[ProbeRow]:
    from drivers import door_access_modbus as door

    coil = await bus.read_coils(unit, door.COIL_LOCK, 1, dev.id)
    discrete = await bus.read_discrete(unit, 0, door.DI_COUNT, dev.id)
    holding = await bus.read_holding(unit, 0, door.HR_COUNT, dev.id)
    i = door.decode_inputs(coil, discrete, holding)
    return [
        ProbeRow("lock_relay", "coil 0", str(int(coil[0])), "released" if i.released else "locked"),
        ProbeRow("door_contact", "discrete 0", str(int(discrete[0])), "open" if i.door_open else "closed"),
        ProbeRow("exit_button", "discrete 1", str(int(discrete[1])), "pressed" if i.exit_pressed else "idle"),
        ProbeRow("card_sequence", "holding 0", _hex(holding[0:1]), i.card_seq),
        ProbeRow("card_bits", "holding 1", _hex(holding[1:2]), i.card_bits),
        ProbeRow("card_frame", "holding 2-5 (uint64)", _hex(holding[2:6]), i.card_raw),
        ProbeRow("pin_sequence", "holding 6", _hex(holding[6:7]), i.pin_seq),
        ProbeRow("pin", "holding 7-8 (uint32)", _hex(holding[7:9]), i.pin),
        ProbeRow("exit_count", "holding 9", _hex(holding[9:10]), i.exit_count),
    ]


async def _fire_rows(bus: ModbusBus, dev: DeviceConfig, unit: int) -> list[ProbeRow]:
    o = FirePanelOptions.model_validate(dev.options)
    spans = [o.status_register, *(o.zone_base + i for i in range(o.zones))]
    raw = await bus.read_table("holding", unit, spans, dev.id)
    status = int(raw[o.status_register])
    on = [name for bit, name in PANEL_BITS.items() if codec.get_bit(status, bit)]
    rows = [
        ProbeRow("panel_status", f"holding {o.status_register}", _hex([status]), ", ".join(on) or "normal")
    ]
    for i in range(o.zones):
        zone = i + 1
        reg = int(raw[o.zone_base + i])
        flags = decode_zone(reg)
        value = "unprogrammed" if flags is None else ", ".join(k for k, v in flags.items() if v) or "none"
        name = o.zone_names.get(str(zone))
        rows.append(
            ProbeRow(
                f"zone_{zone}" + (f" ({name})" if name else ""),
                f"holding {o.zone_base + i}",
                _hex([reg]),
                value,
            )
        )
    return rows


_ROWS = {
    "smart_meter": _meter_rows,
    "barrier_gate": _gate_rows,
    "door_access": _door_rows,
    "fire_panel": _fire_rows,
}


async def _noop_emit(reading: Reading) -> None:
    return None


async def probe_device(
    dev: DeviceConfig,
    *,
    timeout_s: float | None = None,
    ble_seconds: float = 10.0,
    ble_backend: type[BaseBleakScanner] | None = None,
) -> ProbeResult:
    start = time.monotonic()
    if isinstance(dev.transport, BleTransport):
        return await _probe_ble(dev, ble_seconds, ble_backend, start)
    t = _modbus(with_timeout(dev, timeout_s))
    dev = with_timeout(dev, timeout_s)
    rows_for = _ROWS.get(dev.kind)
    if rows_for is None:
        raise CommissionError(f"{dev.id}: probing {dev.kind} is not supported")
    hub = TransportHub()
    try:
        bus = hub.modbus(t)
        try:
            rows = await rows_for(bus, dev, t.unit)
            driver = create_driver(dev, hub, _noop_emit)
            await driver.poll()
            state = driver.snapshot()
        except DriverError as exc:
            return ProbeResult(dev, ok=False, error=exc.reason, elapsed_s=time.monotonic() - start)
        return ProbeResult(dev, ok=True, rows=rows, state=state, elapsed_s=time.monotonic() - start)
    finally:
        await hub.close()


async def _probe_ble(
    dev: DeviceConfig, seconds: float, backend: type[BaseBleakScanner] | None, start: float
) -> ProbeResult:
    assert isinstance(dev.transport, BleTransport)
    address = dev.transport.address.upper()
    heard = await scan_ble(seconds, backend=backend, only={address}, until_all=True)
    seen = heard.get(address)
    if seen is None:
        return ProbeResult(
            dev,
            ok=False,
            error=f"nothing heard from {address} in {seconds:g} s",
            elapsed_s=time.monotonic() - start,
        )
    rows = [ProbeRow(k, "BTHome", "", v) for k, v in seen.values.items()]
    ok = bool(seen.values)
    return ProbeResult(
        dev,
        ok=ok,
        rows=rows,
        state={"rssi": seen.rssi, "name": seen.name},
        error=None if ok else f"{address} heard but not decoded: {seen.note}",
        elapsed_s=time.monotonic() - start,
    )


# ---- one action ------------------------------------------------------------------------------------
@dataclass(slots=True)
class ActionResult:
    device: DeviceConfig
    action: str
    args: dict[str, Any]
    ok: bool
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    settled: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device.id,
            "action": self.action,
            "args": self.args,
            "ok": self.ok,
            "summary": self.summary,
            "before": self.before,
            "after": self.after,
            "settled": self.settled,
            "events": self.events,
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
        }


_STATE_KEY = {"barrier_gate": "state", "door_access": "lock"}


async def run_action(
    dev: DeviceConfig, action: str, args: dict[str, Any], *, timeout_s: float = 60.0
) -> ActionResult:
    try:
        args = validate_action(dev.kind, action, args)
    except ActionNotAllowed as exc:
        raise CommissionError(f"{dev.id}: {exc}") from None
    _modbus(dev)  # MQTT devices: not from the laptop (they answer to the gateway's broker)
    events: list[str] = []

    async def emit(reading: Reading) -> None:
        events.append(reading.type)

    hub = TransportHub()
    driver = create_driver(dev, hub, emit)
    result = ActionResult(dev, action, args, ok=False)
    start = time.monotonic()
    key = _STATE_KEY.get(dev.kind, "state")
    try:
        await driver.open()
        try:
            await driver.poll()  # baseline: the state before, as the gateway would see it
            result.before = driver.snapshot()
            async with asyncio.timeout(timeout_s):
                result.after = await driver.execute(action, args)
            result.ok = True
            if dev.kind == "door_access" and action == "unlock":
                result.settled = await _wait_relock(driver, float(str(args["duration_s"])) + 5)
                if result.settled.get("lock") != "locked":
                    result.ok = False
                    result.error = "the door did not re-lock after the pulse"
        except ActionFailed as exc:
            result.error = exc.reason
        except DriverError as exc:
            result.error = exc.reason
        except TimeoutError:
            result.error = f"{action} did not finish within {timeout_s:g} s"
        if not result.after:
            result.after = driver.snapshot()
    finally:
        await driver.close()
        await hub.close()
    result.elapsed_s = time.monotonic() - start
    result.events = events
    before, after = result.before.get(key, "?"), result.after.get(key, "?")
    if result.ok:
        result.summary = f"{action}: {key} {before} -> {after} in {result.elapsed_s:.1f} s"
        if result.settled is not None:
            result.summary += f", then {result.settled.get('lock')} again"
    else:
        result.summary = f"{action} FAILED: {result.error} ({key} {before} -> {after})"
    return result


async def _wait_relock(driver: Any, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        snap: dict[str, Any] = driver.snapshot()
        if snap.get("lock") == "locked" and snap.get("relock_in_s") is None:
            return snap
        await asyncio.sleep(0.05)
    snap = driver.snapshot()
    return dict(snap)


# ---- live config check -----------------------------------------------------------------------------
@dataclass(slots=True)
class CheckRow:
    device_id: str
    check: str
    result: str  # pass | fail | skip
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "device_id": self.device_id,
            "check": self.check,
            "result": self.result,
            "detail": self.detail,
        }


async def _tcp_reachable(host: str, port: int, timeout_s: float) -> str | None:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        return f"cannot connect to {host}:{port} ({why})"
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass
    return None


async def _check_modbus(dev: DeviceConfig, hub: TransportHub) -> list[CheckRow]:
    t = _modbus(dev)
    rows: list[CheckRow] = []
    if isinstance(t, ModbusTcpTransport):
        problem = await _tcp_reachable(t.host, t.port, max(t.timeout_s, 1.0))
        where = f"{t.host}:{t.port}"
    else:
        exists = await asyncio.to_thread(os.path.exists, t.port)
        problem = None if exists else f"no serial port {t.port}"
        where = t.port
    if problem:
        return [
            CheckRow(dev.id, "reachable", "fail", problem),
            CheckRow(dev.id, "answers", "skip", "bus not reachable"),
        ]
    rows.append(CheckRow(dev.id, "reachable", "pass", where))
    try:
        driver = create_driver(dev, hub, _noop_emit)
        await driver.poll()
        rows.append(CheckRow(dev.id, "answers", "pass", f"unit {t.unit}: driver read every point"))
    except DriverError as exc:
        rows.append(CheckRow(dev.id, "answers", "fail", exc.reason))
        return rows
    bus = hub.modbus(t)
    try:
        values = await read_fingerprint_values(bus, t.unit, all_reads())
    except DriverError as exc:
        rows.append(CheckRow(dev.id, "model", "fail", exc.reason))
        return rows
    ok, detail = check_model(values, dev.kind, dev.model)
    rows.append(CheckRow(dev.id, "model", "skip" if ok is None else ("pass" if ok else "fail"), detail))
    return rows


async def live_check(
    site: SiteConfig,
    *,
    timeout_s: float | None = None,
    ble_seconds: float = 5.0,
    ble_backend: type[BaseBleakScanner] | None = None,
) -> list[CheckRow]:
    """Reachability, answer and identity of every device; Modbus buses checked in parallel."""
    hub = TransportHub()
    by_bus: dict[str, list[DeviceConfig]] = {}
    ble: list[DeviceConfig] = []
    mqtt: list[DeviceConfig] = []
    for dev in site.devices:
        if isinstance(dev.transport, ModbusTcpTransport | ModbusRtuTransport):
            by_bus.setdefault(dev.transport.bus, []).append(with_timeout(dev, timeout_s))
        elif isinstance(dev.transport, BleTransport):
            ble.append(dev)
        else:
            mqtt.append(dev)

    async def one_bus(devices: list[DeviceConfig]) -> list[CheckRow]:
        out: list[CheckRow] = []
        for dev in devices:
            out += await _check_modbus(dev, hub)
        return out

    async def ble_rows() -> list[CheckRow]:
        if not ble:
            return []
        addresses = {d.transport.address.upper() for d in ble if isinstance(d.transport, BleTransport)}
        try:
            heard = await scan_ble(ble_seconds, backend=ble_backend, only=addresses, until_all=True)
        except BleScanError as exc:  # the radio itself failed: every BLE device fails with the reason
            return [CheckRow(d.id, "heard", "fail", str(exc)) for d in ble]
        out = []
        for d in ble:
            assert isinstance(d.transport, BleTransport)
            seen = heard.get(d.transport.address.upper())
            if seen is None:
                out.append(CheckRow(d.id, "heard", "fail", f"nothing heard in {ble_seconds:g} s"))
            elif seen.values:
                out.append(CheckRow(d.id, "heard", "pass", f"RSSI {seen.rssi} dBm, {seen.reading}"))
            else:
                out.append(CheckRow(d.id, "heard", "fail", f"RSSI {seen.rssi} dBm but {seen.note}"))
        return out

    async def mqtt_rows() -> list[CheckRow]:
        if not mqtt:
            return []
        from urllib.parse import urlparse

        url = urlparse(site.device_broker_url or site.uplink.broker_url)
        host, port = url.hostname or "127.0.0.1", url.port or (8883 if url.scheme == "mqtts" else 1883)
        problem = await _tcp_reachable(host, port, 2.0)
        return [
            CheckRow(d.id, "broker", "fail" if problem else "pass", problem or f"device broker {host}:{port}")
            for d in mqtt
        ]

    try:
        groups = await asyncio.gather(*(one_bus(d) for d in by_bus.values()), ble_rows(), mqtt_rows())
    finally:
        await hub.close()
    rows = [r for g in groups for r in g]
    order = {d.id: i for i, d in enumerate(site.devices)}
    rows.sort(key=lambda r: order.get(r.device_id, 0))
    return rows
