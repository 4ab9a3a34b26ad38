"""Device config -> simulator: start a whole site's devices on the addresses its config names.

Modbus devices that share a bus (same TCP host:port) share one :class:`ModbusSimServer`, as
they would share one gateway or RS-485 line on site. MQTT and BLE devices come from
``simulators.push`` (owned separately); a kind with no simulator yet is skipped with a warning
so a partial site still runs.

RTU devices: a site config names the port the *gateway* opens, so the simulator needs the other
end of the line. Pass ``rtu_server_ports={client_port: server_port}``, e.g. from a
:class:`simulators.serial_pty.PtyLink` (``{link.client_path: link.server_path}``) or a real
null-modem pair (``{"/dev/ttyUSB0": "/dev/ttyUSB1"}``). Devices sharing a client port share one
serial :class:`ModbusSimServer` at that transport's baud rate and framing; an RTU device whose
port is not in the mapping is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from simulators.base import Simulator
from simulators.modbus_server import ModbusSimServer
from steward.config import DeviceConfig, ModbusRtuTransport, ModbusTcpTransport, SiteConfig

__all__ = ["create_simulator_for", "modbus_simulator_class", "run_site_simulators"]

log = structlog.get_logger("steward.sim")

# kind -> simulator class path, imported lazily (like drivers.registry) so one broken sim
# cannot stop the others from starting.
_MODBUS_SIMS: dict[str, str] = {
    "barrier_gate": "simulators.barrier_gate:BarrierGateSimulator",
    "fire_panel": "simulators.fire_panel:FirePanelSimulator",
    "smart_meter": "simulators.smart_meter:SmartMeterSimulator",
    "door_access": "simulators.door_access_modbus:ModbusDoorSimulator",
}


def modbus_simulator_class(kind: str) -> type[Simulator]:
    try:
        path = _MODBUS_SIMS[kind]
    except KeyError:
        raise LookupError(f"no Modbus simulator for {kind!r}") from None
    module, _, name = path.partition(":")
    try:
        cls: type[Simulator] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"simulator for {kind!r} is not available ({exc})") from None
    return cls


def create_simulator_for(
    device: DeviceConfig,
    *,
    server: ModbusSimServer | None = None,
    site: SiteConfig | None = None,
    travel_time_s: float | None = None,
) -> Simulator:
    """A simulator for one device. Modbus devices join ``server`` if given, else get their own
    server bound to the device's configured address. Raises LookupError for unsupported kinds."""
    t = device.transport
    if isinstance(t, ModbusTcpTransport):
        cls = modbus_simulator_class(device.kind)
        kwargs: dict[str, Any] = (
            {"server": server} if server is not None else {"host": t.host, "port": t.port}
        )
        kwargs.update(_extra_kwargs(cls, device, travel_time_s))
        return cls(t.unit, **kwargs)  # type: ignore[call-arg]
    if isinstance(t, ModbusRtuTransport):
        if server is None:
            raise LookupError(
                f"{device.id}: an RTU device needs a serial simulator server (see simulators.serial_pty)"
            )
        cls = modbus_simulator_class(device.kind)
        return cls(t.unit, server=server, **_extra_kwargs(cls, device, travel_time_s))  # type: ignore[call-arg]
    if site is None:
        raise LookupError(f"{device.id}: push devices need the site config")
    push = importlib.import_module("simulators.push")
    sim: Simulator = push.create_push_simulator(device, site)
    return sim


def _extra_kwargs(cls: type[Simulator], device: DeviceConfig, travel_time_s: float | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if device.kind == "barrier_gate" and travel_time_s is not None:
        extra["travel_time_s"] = travel_time_s
    # Simulators that mirror a model (meters) or an option (zone count) take the device config.
    if getattr(cls, "takes_device_config", False):
        extra["device"] = device
    return extra


@contextlib.asynccontextmanager
async def run_site_simulators(
    site: SiteConfig,
    *,
    travel_time_s: float | None = None,
    only: set[str] | None = None,
    rtu_server_ports: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, Simulator]]:
    """Start a simulator for every device (or those in ``only``); yield device id -> simulator.

    ``rtu_server_ports`` maps an RTU device's configured (gateway-side) port to the port its
    simulator server opens (see the module docstring)."""
    servers: dict[str, ModbusSimServer] = {}
    sims: dict[str, Simulator] = {}
    started: list[Simulator] = []
    try:
        for dev in site.devices:
            if only is not None and dev.id not in only:
                continue
            t = dev.transport
            server: ModbusSimServer | None = None
            if isinstance(t, ModbusTcpTransport):
                server = servers.get(t.bus)
                if server is None:
                    server = servers[t.bus] = ModbusSimServer(t.host, t.port)
            elif isinstance(t, ModbusRtuTransport):
                server_port = (rtu_server_ports or {}).get(t.port)
                if server_port is None:
                    log.warning(
                        "RTU device skipped: no server-side port given for it (rtu_server_ports)",
                        device=dev.id,
                        port=t.port,
                    )
                    continue
                server = servers.get(t.bus)
                if server is None:
                    server = servers[t.bus] = ModbusSimServer(
                        serial=server_port,
                        baudrate=t.baudrate,
                        parity=t.parity,
                        stopbits=t.stopbits,
                        bytesize=t.bytesize,
                    )
            try:
                sims[dev.id] = create_simulator_for(
                    dev, server=server, site=site, travel_time_s=travel_time_s
                )
            except (LookupError, ImportError) as exc:
                log.warning("device not simulated", device=dev.id, kind=dev.kind, reason=str(exc))
        for server in servers.values():
            if server.units:
                await server.start()
        for sim in sims.values():
            await sim.start()
            started.append(sim)
        yield sims
    finally:
        for sim in reversed(started):
            with contextlib.suppress(Exception):
                await sim.stop()
        for server in servers.values():
            await server.stop()
