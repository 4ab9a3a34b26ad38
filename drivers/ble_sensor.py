"""BTHome v2 BLE environment sensors (temperature, humidity, pressure...), heard through ``hub.ble``.

The driver registers the device's address with the gateway's one :class:`~drivers.transports.ble.BleScanner`
and gets each advertisement through a bounded queue (the oldest is dropped when a burst outruns us).
Sensors repeat each packet many times; a packet whose id (BTHome object 0x00) was already seen is
dropped, and a sensor without packet ids is deduplicated on identical bytes within ``repeat_s``.

Events::

    sensor.reading              {"values": {...}, "units": {...}, "packet_id", "rssi", "battery"?}
    sensor.threshold_exceeded   {"metric", "value", "bound": "max"|"min", "limit"}
    sensor.normal               {"metric", "value", "bound", "limit"}  back inside limit ∓ hysteresis

Options::

    thresholds: {humidity: {max: 80, hysteresis: 2}, pressure: {min: 200, max: 600}}
    repeat_s: 300        # same bytes without packet id within this long = a repeat
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import Driver, Reading
from drivers.bthome import BTHOME_SERVICE_UUID, MEASUREMENT_NAMES, UNITS, BTHomeError, parse_advertisement
from drivers.transports.ble import Advertisement
from steward.config import BleTransport

__all__ = [
    "BleSensorDriver",
    "BleSensorOptions",
    "Threshold",
    "ThresholdTracker",
]

_QUEUE_SIZE = 64


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None
    hysteresis: float = Field(default=1.0, ge=0, description="How far back inside a limit to count as normal")

    @model_validator(mode="after")
    def _sane(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if (
            self.min is not None
            and self.max is not None
            and self.min + self.hysteresis >= self.max - self.hysteresis
        ):
            raise ValueError("min + hysteresis must stay below max - hysteresis")
        return self


class BleSensorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
    repeat_s: float = Field(default=300.0, gt=0, le=86_400)

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        unknown = sorted(set(value) - MEASUREMENT_NAMES)
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(unknown)}; BTHome reports e.g. temperature, humidity"
            )
        return value


Zone = Literal["normal", "high", "low"]


class ThresholdTracker:
    """Pure state machine for one metric: which side of its limits it is on, with hysteresis."""

    def __init__(self, metric: str, limits: Threshold) -> None:
        self.metric = metric
        self.limits = limits
        self.zone: Zone = "normal"

    def update(self, value: float) -> Reading | None:
        lim = self.limits
        new: Zone = self.zone
        if lim.max is not None and value > lim.max:
            new = "high"
        elif lim.min is not None and value < lim.min:
            new = "low"
        elif self.zone == "high" and lim.max is not None:
            new = "normal" if value <= lim.max - lim.hysteresis else "high"
        elif self.zone == "low" and lim.min is not None:
            new = "normal" if value >= lim.min + lim.hysteresis else "low"
        if new == self.zone:
            return None
        old, self.zone = self.zone, new
        if new == "normal":
            bound = "max" if old == "high" else "min"
            limit = lim.max if old == "high" else lim.min
            return Reading(
                "sensor.normal", {"metric": self.metric, "value": value, "bound": bound, "limit": limit}
            )
        bound = "max" if new == "high" else "min"
        limit = lim.max if new == "high" else lim.min
        return Reading(
            "sensor.threshold_exceeded",
            {"metric": self.metric, "value": value, "bound": bound, "limit": limit},
        )


class BleSensorDriver(Driver):
    kind: ClassVar[str] = "ble_sensor"
    polled: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = BleSensorOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        transport = self.config.transport
        if not isinstance(transport, BleTransport):
            raise TypeError(f"{self.device_id}: ble_sensor needs a ble transport")
        self.address = transport.address.upper()
        self._queue: deque[Advertisement] = deque(maxlen=_QUEUE_SIZE)
        self._arrived = asyncio.Event()
        self._unregister: Any = None
        self._trackers = {m: ThresholdTracker(m, t) for m, t in self.options.thresholds.items()}
        self._last_packet_id: int | None = None
        self._last_bytes: bytes | None = None
        self._last_bytes_at = 0.0
        self.values: dict[str, Any] = {}
        self.rssi: int | None = None
        self.last_seen: str | None = None
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.bad_packets = 0

    async def open(self) -> None:
        if self._unregister is None:
            self._unregister = self.hub.ble.register(self.address, self._on_advertisement)

    async def close(self) -> None:
        unregister, self._unregister = self._unregister, None
        if unregister is not None:
            unregister()

    def _on_advertisement(self, ad: Advertisement) -> None:
        # Called by the scanner in the event loop: only queue, never block.
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(ad)
        self._arrived.set()

    async def listen(self) -> None:
        await self.open()
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                while self._queue:
                    for reading in self.handle(self._queue.popleft()):
                        await self.emit(reading)
        finally:
            await self.close()

    def handle(self, ad: Advertisement) -> list[Reading]:
        """Turn one advertisement into events (empty for repeats and garbage)."""
        self.received += 1
        try:
            packet = parse_advertisement(ad.service_data)
        except BTHomeError as exc:
            self.bad_packets += 1
            if self.bad_packets == 1 or self.bad_packets % 100 == 0:
                self.log.warning(
                    "ble_sensor.bad_packet", address=ad.address, error=str(exc), count=self.bad_packets
                )
            return []
        if packet.packet_id is not None:
            if packet.packet_id == self._last_packet_id:
                self.duplicates += 1
                return []
            self._last_packet_id = packet.packet_id
        else:
            raw = ad.service_data.get(BTHOME_SERVICE_UUID, b"")
            now = time.monotonic()
            if raw == self._last_bytes and now - self._last_bytes_at < self.options.repeat_s:
                self.duplicates += 1
                return []
            self._last_bytes, self._last_bytes_at = raw, now
        self.rssi = ad.rssi
        self.last_seen = ad.ts.isoformat()
        self.values.update(packet.values)
        data: dict[str, Any] = {
            "values": dict(packet.values),
            "units": {k: UNITS[k] for k in packet.values if k in UNITS},
            "packet_id": packet.packet_id,
            "rssi": ad.rssi,
        }
        if packet.events:
            data["events"] = [{"type": t, "value": v} for t, v in packet.events]
        out = [Reading("sensor.reading", data, ad.ts)]
        for metric, tracker in self._trackers.items():
            value = packet.values.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool):
                change = tracker.update(float(value))
                if change is not None:
                    change.ts = ad.ts
                    out.append(change)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "values": dict(self.values),
            "rssi": self.rssi,
            "last_seen": self.last_seen,
            "zones": {m: t.zone for m, t in self._trackers.items()},
            "received": self.received,
            "duplicates": self.duplicates,
            "bad_packets": self.bad_packets,
            "dropped": self.dropped,
        }
