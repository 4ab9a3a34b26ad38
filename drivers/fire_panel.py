"""Fire alarm panel through its Modbus gateway, laid out like the Notifier/Honeywell gateways.

Register map (holding registers)::

    status_register (default 0)    panel status bits: 0 mains fail, 1 battery fault, 2 silenced,
                                   3 reset in progress, 4 earth fault
    zone_base + n   (default 100)  zone/point n+1: low byte device type, upper byte flags
                                   bit 8 enabled, 9 disabled, 10 active, 11 trouble,
                                   12 pre-alarm, 13 fire alarm, 14 acknowledged
                                   0x00FF = unprogrammed point (ignored)

Events carry the zone: ``fire.alarm``, ``fire.prealarm``, ``fire.fault`` (zone trouble),
``fire.panel_fault`` (mains/battery/earth), ``fire.restored`` (a zone or panel condition cleared).
Each is reported on the edge, once, however fast the panel is polled. Conditions present at the
first poll are reported too: a fire does not become old news because the gateway restarted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import Driver, Emit, Reading
from drivers.transports import codec
from steward.config import ModbusRtuTransport, ModbusTcpTransport

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig

__all__ = ["PANEL_BITS", "ZONE_BITS", "FirePanelDriver", "FirePanelOptions", "decode_zone"]

UNPROGRAMMED = 0x00FF
ZONE_BITS = {
    8: "enabled",
    9: "disabled",
    10: "active",
    11: "trouble",
    12: "prealarm",
    13: "alarm",
    14: "acked",
}
PANEL_BITS = {0: "mains_fail", 1: "battery_fault", 2: "silenced", 3: "reset", 4: "earth_fault"}
PANEL_FAULTS = ("mains_fail", "battery_fault", "earth_fault")


def decode_zone(raw: int) -> dict[str, bool] | None:
    """Flags of one zone register, or None for an unprogrammed point."""
    if raw == UNPROGRAMMED:
        return None
    return codec.flags(raw, ZONE_BITS)


class FirePanelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zones: int = Field(default=16, ge=1, le=1000, description="How many zone registers to read")
    zone_base: int = Field(default=100, ge=0, le=65535)
    status_register: int = Field(default=0, ge=0, le=65535)
    zone_names: dict[str, str] = Field(default_factory=dict, description="Zone number -> name")


class FirePanelDriver(Driver):
    kind: ClassVar[str] = "fire_panel"
    Options: ClassVar[type[BaseModel]] = FirePanelOptions

    def __init__(self, config: DeviceConfig, hub: TransportHub, emit: Emit) -> None:
        super().__init__(config, hub, emit)
        t = config.transport
        if not isinstance(t, ModbusTcpTransport | ModbusRtuTransport):
            raise TypeError(f"{config.id}: fire_panel needs a Modbus transport")
        self.unit = t.unit
        self.bus = hub.modbus(t)
        self._zones: dict[int, dict[str, bool] | None] = {}
        self._panel: dict[str, bool] = {}

    @classmethod
    def check_config(cls, dev: DeviceConfig) -> list[str]:
        opts = dev.options
        zones = opts.get("zones", 16)
        names = opts.get("zone_names", {})
        if isinstance(names, dict) and isinstance(zones, int):
            bad = [k for k in names if not str(k).isdigit() or not 1 <= int(k) <= zones]
            if bad:
                return [f"options.zone_names: no zone {', '.join(map(str, bad))} (zones are 1..{zones})"]
        return []

    def _zone_data(self, zone: int, flags: dict[str, bool]) -> dict[str, Any]:
        data: dict[str, Any] = {"zone": zone, "acknowledged": flags["acked"]}
        name = self.options.zone_names.get(str(zone))
        if name:
            data["zone_name"] = name
        return data

    async def poll(self) -> list[Reading]:
        o = self.options
        spans = [o.status_register, *((o.zone_base + i) for i in range(o.zones))]
        raw = await self.bus.read_table("holding", self.unit, spans, self.device_id)
        out: list[Reading] = []
        panel = codec.flags(int(raw[o.status_register]), PANEL_BITS)
        for fault in PANEL_FAULTS:
            if panel[fault] and not self._panel.get(fault):
                out.append(Reading("fire.panel_fault", {"fault": fault}))
            elif not panel[fault] and self._panel.get(fault):
                out.append(Reading("fire.restored", {"panel": True, "fault": fault}))
        self._panel = panel
        for i in range(o.zones):
            zone = i + 1
            flags = decode_zone(int(raw[o.zone_base + i]))
            old = self._zones.get(zone)
            self._zones[zone] = flags
            if flags is None:
                continue
            before = old or {}
            data = self._zone_data(zone, flags)
            if flags["alarm"] and not before.get("alarm"):
                out.append(Reading("fire.alarm", data))
            elif flags["prealarm"] and not flags["alarm"] and not before.get("prealarm"):
                out.append(Reading("fire.prealarm", data))
            if flags["trouble"] and not before.get("trouble"):
                out.append(Reading("fire.fault", data))
            was = [k for k in ("alarm", "prealarm", "trouble") if before.get(k)]
            cleared = [k for k in was if not flags[k]]
            if cleared and not any(flags[k] for k in ("alarm", "prealarm", "trouble")):
                out.append(Reading("fire.restored", {**data, "cleared": cleared}))
        for r in out:
            self.log.warning(
                "fire panel event", type=r.type, **{k: v for k, v in r.data.items() if k != "type"}
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        active = {
            z: [k for k in ("alarm", "prealarm", "trouble", "disabled") if f[k]]
            for z, f in self._zones.items()
            if f is not None and any(f[k] for k in ("alarm", "prealarm", "trouble", "disabled"))
        }
        return {"panel": dict(self._panel), "zones": {str(z): v for z, v in active.items()}}
