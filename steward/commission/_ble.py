"""BLE side of commissioning: listen to advertisements for a while, decode the BTHome ones.

The scan is active and unfiltered (an installer wants to see every sensor in range, not only the
configured ones) and goes through bleak's public :class:`~bleak.BleakScanner`. The backend comes
from the caller (``backend=None`` is the platform's radio), which is how tests use the fake radio
of ``simulators.ble_sensor``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.bthome import BTHOME_SERVICE_UUID, BTHomeEncryptedError, BTHomeError, parse_service_data

__all__ = ["BleScanError", "BleSeen", "scan_ble"]


class BleScanError(Exception):
    """The radio could not be used; the message says why."""


@dataclass(slots=True)
class BleSeen:
    address: str
    name: str | None
    rssi: int
    count: int = 0
    bthome: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def reading(self) -> str:
        if self.values:
            return ", ".join(f"{k}={v}" for k, v in self.values.items())
        return self.note

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "advertisements": self.count,
            "bthome": self.bthome,
            "values": self.values,
            "note": self.note,
        }


def _decode(seen: BleSeen, adv: AdvertisementData) -> None:
    payload = {k.lower(): bytes(v) for k, v in adv.service_data.items()}.get(BTHOME_SERVICE_UUID)
    if payload is None:
        if not seen.bthome:
            seen.note = "not a BTHome sensor"
        return
    seen.bthome = True
    try:
        packet = parse_service_data(payload)
    except BTHomeEncryptedError:
        seen.note = "BTHome, encrypted (needs a bindkey; not decoded)"
        return
    except BTHomeError as exc:
        seen.note = f"BTHome, undecodable: {exc}"
        return
    seen.values.update(packet.values)
    seen.note = ""


async def scan_ble(
    seconds: float,
    *,
    backend: type[BaseBleakScanner] | None = None,
    only: set[str] | None = None,
    until_all: bool = False,
) -> dict[str, BleSeen]:
    """Listen for ``seconds``; address -> what was heard. ``only`` limits to those addresses, and
    ``until_all`` stops as soon as every one of them has been heard with a decoded reading."""
    heard: dict[str, BleSeen] = {}
    wanted = {a.upper() for a in only} if only else None
    complete = asyncio.Event()

    def on_detect(device: BLEDevice, adv: AdvertisementData) -> None:
        address = device.address.upper()
        if wanted is not None and address not in wanted:
            return
        seen = heard.get(address)
        if seen is None:
            seen = heard[address] = BleSeen(address, adv.local_name or device.name, adv.rssi)
        seen.count += 1
        seen.rssi = adv.rssi
        seen.name = adv.local_name or seen.name
        _decode(seen, adv)
        if until_all and wanted and all(a in heard and (heard[a].values or heard[a].note) for a in wanted):
            complete.set()

    try:
        scanner = BleakScanner(on_detect, scanning_mode="active", backend=backend)
        async with scanner:
            try:
                async with asyncio.timeout(seconds):
                    await complete.wait()
            except TimeoutError:
                pass
    except (BleakError, OSError) as exc:
        raise BleScanError(
            f"cannot scan for BLE devices (is there a Bluetooth adapter, and is BlueZ running?): {exc}"
        ) from None
    return heard
