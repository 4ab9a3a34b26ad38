"""A BTHome v2 environment sensor, and the fake radio it broadcasts on.

There is no BLE radio in CI or the demo, so this is the one place Steward fakes the physical layer:
:class:`FakeRadio` is "the air". Its :attr:`FakeRadio.scanner_backend` and
:attr:`FakeRadio.client_backend` are real bleak backends (subclasses of bleak's
``BaseBleakScanner`` / ``BaseBleakClient``) that plug into ``BleakScanner(backend=...)`` and
``BleakClient(..., backend=...)``, so everything above them — bleak's public API, the gateway's
``BleScanner``, the driver — runs unmodified::

    radio = FakeRadio()
    scanner = BleScanner(backend=radio.scanner_backend, client_backend=radio.client_backend)
    async with scanner, BleSensorSimulator(device, radio) as sim:
        sim.set(humidity=85)          # next advertisement carries it

Like BlueZ, a passive scan needs or-patterns and only hears advertisements matching one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bleak.uuids import normalize_uuid_str

from drivers.bthome import BTHOME_SERVICE_UUID, encode_service_data
from simulators.base import Simulator
from steward.config import BleTransport, DeviceConfig

__all__ = [
    "BleSensorSimulator",
    "FakePeripheral",
    "FakeRadio",
    "fake_backend_for",
]


def _uuid16_of(uuid: str) -> bytes | None:
    u = uuid.lower()
    if u.startswith("0000") and u.endswith("-0000-1000-8000-00805f9b34fb"):
        return int(u[4:8], 16).to_bytes(2, "little")
    return None


def _matches(patterns: list[Any], adv: AdvertisementData) -> bool:
    """BlueZ or-pattern semantics, enough for service data (AD type 0x16) and names (0x08/0x09)."""
    for start, ad_type, value in patterns:
        if int(ad_type) == 0x16:
            for uuid, data in adv.service_data.items():
                u16 = _uuid16_of(uuid)
                if u16 is not None and (u16 + bytes(data))[start : start + len(value)] == bytes(value):
                    return True
        elif (
            int(ad_type) in (0x08, 0x09)
            and adv.local_name
            and adv.local_name.encode()[start : start + len(value)] == bytes(value)
        ):
            return True
    return False


class _FakeScanner(BaseBleakScanner):
    radio: ClassVar[FakeRadio]

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        bluez: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode
        self.or_patterns = list((bluez or {}).get("or_patterns", []))

    async def start(self) -> None:
        if self.scanning_mode == "passive" and not self.or_patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self.seen_devices = {}
        self.radio._scanners.add(self)

    async def stop(self) -> None:
        self.radio._scanners.discard(self)

    def _hear(self, address: str, adv: AdvertisementData) -> None:
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        if self.scanning_mode == "passive" and not _matches(self.or_patterns, adv):
            return
        device = self.create_or_update_device(address, address, adv.local_name, None, adv)
        self.call_detection_callbacks(device, adv)


class FakePeripheral:
    """A connectable device: characteristics by UUID; ``on_write`` may answer or refuse writes."""

    def __init__(self, address: str, characteristics: dict[str, bytes], service_uuid: str) -> None:
        self.address = address.upper()
        self.values = {normalize_uuid_str(k): bytes(v) for k, v in characteristics.items()}
        self.service_uuid = normalize_uuid_str(service_uuid)
        self.writes: list[tuple[str, bytes]] = []
        self.on_write: Callable[[str, bytes], None] | None = None
        self.connected = False


class _FakeClient(BaseBleakClient):
    radio: ClassVar[FakeRadio]

    def __init__(self, address_or_ble_device: Any, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self._peripheral: FakePeripheral | None = None

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return 23

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        peripheral = self.radio._peripherals.get(self.address.upper())
        if peripheral is None:
            raise BleakDeviceNotFoundError(self.address, f"device {self.address} not found")
        services = BleakGATTServiceCollection()
        service = BleakGATTService(None, 1, peripheral.service_uuid)
        services.add_service(service)
        for handle, uuid in enumerate(peripheral.values, start=2):
            services.add_characteristic(
                BleakGATTCharacteristic(None, handle, uuid, ["read", "write"], lambda: 20, service)
            )
        self.services = services
        peripheral.connected = True
        self._peripheral = peripheral

    async def disconnect(self) -> None:
        if self._peripheral is not None:
            self._peripheral.connected = False
        self._peripheral = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    @property
    def is_connected(self) -> bool:
        return self._peripheral is not None

    def _linked(self) -> FakePeripheral:
        if self._peripheral is None:
            raise BleakError(f"{self.address}: not connected")
        return self._peripheral

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(self._linked().values[characteristic.uuid])

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        raise BleakError("the fake radio has no descriptors")

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        peripheral = self._linked()
        value = bytes(data)
        if peripheral.on_write is not None:
            peripheral.on_write(characteristic.uuid, value)  # may raise BleakError to refuse
        peripheral.writes.append((characteristic.uuid, value))
        peripheral.values[characteristic.uuid] = value

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise BleakError("the fake radio has no descriptors")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: Any, **kwargs: Any
    ) -> None:
        raise BleakError("the fake radio has no notifications")

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        return None


class FakeRadio:
    """The air: advertisements reach every started scanner built from :attr:`scanner_backend`."""

    _default: ClassVar[FakeRadio | None] = None

    def __init__(self) -> None:
        self._scanners: set[_FakeScanner] = set()
        self._peripherals: dict[str, FakePeripheral] = {}
        self.scanner_backend: type[BaseBleakScanner] = type(
            "FakeBleakScanner", (_FakeScanner,), {"radio": self}
        )
        self.client_backend: type[BaseBleakClient] = type("FakeBleakClient", (_FakeClient,), {"radio": self})

    @classmethod
    def default(cls) -> FakeRadio:
        """The process-wide air, shared by simulators made by ``create_push_simulator`` and the demo."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    @property
    def listeners(self) -> int:
        return len(self._scanners)

    def advertise(
        self,
        address: str,
        *,
        service_data: dict[str, bytes] | None = None,
        manufacturer_data: dict[int, bytes] | None = None,
        local_name: str | None = None,
        rssi: int = -60,
    ) -> int:
        """Broadcast one advertisement now; returns how many scanners heard it."""
        service_data = service_data or {}
        adv = AdvertisementData(
            local_name=local_name,
            manufacturer_data=dict(manufacturer_data or {}),
            service_data=dict(service_data),
            service_uuids=list(service_data),
            tx_power=None,
            rssi=rssi,
            platform_data=(),
        )
        heard = 0
        for scanner in list(self._scanners):
            scanner._hear(address.upper(), adv)
            heard += 1
        return heard

    def add_peripheral(
        self,
        address: str,
        characteristics: dict[str, bytes],
        service_uuid: str = "0000fff0-0000-1000-8000-00805f9b34fb",
    ) -> FakePeripheral:
        peripheral = FakePeripheral(address, characteristics, service_uuid)
        self._peripherals[peripheral.address] = peripheral
        return peripheral


class BleSensorSimulator(Simulator):
    """A BTHome v2 temperature/humidity/pressure sensor advertising every ``interval_s``.

    Each change of values (:meth:`set`) bumps the packet id, as real firmware does; between changes
    the same packet is repeated, which the driver must deduplicate.
    """

    kind = "ble_sensor"

    def __init__(
        self,
        device: DeviceConfig,
        radio: FakeRadio | None = None,
        *,
        interval_s: float = 1.0,
        temperature: float = 21.5,
        humidity: float = 45.0,
        pressure: float = 1013.25,
        battery: int = 95,
        rssi: int = -62,
    ) -> None:
        if not isinstance(device.transport, BleTransport):
            raise ValueError(f"{device.id}: BleSensorSimulator needs a ble transport")
        self.device = device
        self.address = device.transport.address.upper()
        self.radio = radio or FakeRadio.default()
        self.interval_s = interval_s
        self.rssi = rssi
        self.values: dict[str, float | int] = {
            "battery": battery,
            "temperature": temperature,
            "humidity": humidity,
            "pressure": pressure,
        }
        self.packet_id = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def set(self, **values: float) -> None:
        """Change readings (temperature, humidity, pressure, battery); the next packet has a new id."""
        unknown = set(values) - set(self.values)
        if unknown:
            raise ValueError(f"unknown reading(s) {sorted(unknown)}; known: {sorted(self.values)}")
        self.values.update(values)
        self.packet_id = (self.packet_id + 1) % 256

    def payload(self) -> bytes:
        return encode_service_data({"packet_id": self.packet_id, **self.values})

    def advertise_now(self) -> int:
        """Send the current packet once (tests call this instead of waiting for the interval)."""
        self.sent += 1
        return self.radio.advertise(
            self.address, service_data={BTHOME_SERVICE_UUID: self.payload()}, rssi=self.rssi
        )

    def advertise_raw(self, service_data: bytes, uuid: str = BTHOME_SERVICE_UUID) -> int:
        """Send arbitrary service data from this address (garbage, other versions, encrypted...)."""
        return self.radio.advertise(self.address, service_data={uuid: service_data}, rssi=self.rssi)

    async def _run(self) -> None:
        while True:
            self.advertise_now()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sim-ble-{self.device.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    def state(self) -> dict[str, Any]:
        return {"address": self.address, "packet_id": self.packet_id, "sent": self.sent, **self.values}


def fake_backend_for(sims: Mapping[str, Simulator]) -> type[BaseBleakScanner]:
    """The scanner backend that hears the BLE simulators among ``sims`` (the demo's radio-less gateway).

    All of them must share one radio; with none, the process-wide default air.
    """
    radios = {id(s.radio): s.radio for s in sims.values() if isinstance(s, BleSensorSimulator)}
    if len(radios) > 1:
        raise ValueError("BLE simulators on different fake radios cannot be heard by one scanner")
    radio = next(iter(radios.values()), None) or FakeRadio.default()
    return radio.scanner_backend
