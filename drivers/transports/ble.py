"""The gateway's one BLE scanner, fanning advertisements out to drivers by device address.

One radio, one owner: :class:`BleScanner` wraps a single :class:`bleak.BleakScanner` and calls the
callbacks drivers registered for an address (synchronously, in the event loop; a callback must
not block — drivers put the advertisement on their own bounded queue). Scanning is passive where
the platform allows it (BlueZ, with an or-pattern on BTHome's service data UUID), so sensors are
not asked for scan responses they do not need to send.

:class:`GattLink` is a small connect/read/write helper over :class:`bleak.BleakClient` for devices
that need a connection (BLE locks). Connections go one at a time: most adapters cannot scan and
hold many connections at once.

Both take ``backend=`` / ``client_backend=``, bleak's own hook for custom backends, which is how the
tests and the demo drive them without a radio (see ``simulators.ble_sensor.FakeRadio``).

Errors::

    BleError            bleak failed (adapter missing, connect timeout, GATT error); message says which
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

__all__ = [
    "Advertisement",
    "AdvertisementCallback",
    "BleError",
    "BleScanner",
    "GattLink",
    "normalize_address",
]

log = structlog.get_logger("steward.ble")

# BTHome's 16-bit service UUID as it appears in AD type 0x16 (service data), little-endian.
_BTHOME_OR_PATTERN = (0, 0x16, b"\xd2\xfc")


class BleError(Exception):
    """A BLE operation failed; the message names the address and what bleak said."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What drivers get: one advertisement, detached from bleak's types."""

    address: str
    rssi: int
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    local_name: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


AdvertisementCallback = Callable[[Advertisement], None]


def normalize_address(address: str) -> str:
    return address.strip().upper()


class BleScanner:
    """Start once (``async with BleScanner() as s`` or start()/stop()); drivers call :meth:`register`."""

    def __init__(
        self,
        *,
        backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
        passive: bool = True,
        adapter: str | None = None,
    ) -> None:
        self._backend = backend
        self._client_backend = client_backend
        self._passive = passive
        self._adapter = adapter
        self._scanner: BleakScanner | None = None
        self._callbacks: dict[str, dict[int, AdvertisementCallback]] = {}
        self._next_token = 0
        self._connect_lock = asyncio.Lock()
        self.received = 0
        self.callback_errors = 0

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def scanning_mode(self) -> str:
        # Passive scanning needs BlueZ (with or-patterns) or a custom backend; CoreBluetooth and
        # WinRT want active scanning.
        if not self._passive:
            return "active"
        if self._backend is not None or platform.system() == "Linux":
            return "passive"
        return "active"

    async def start(self) -> None:
        if self._scanner is not None:
            return
        bluez: dict[str, Any] = {}
        if self._adapter:
            bluez["adapter"] = self._adapter
        mode = self.scanning_mode
        if mode == "passive":
            bluez["or_patterns"] = [_BTHOME_OR_PATTERN]
        try:
            scanner = BleakScanner(
                detection_callback=self._on_detection,
                scanning_mode=mode,  # type: ignore[arg-type]
                bluez=bluez,  # type: ignore[arg-type]
                backend=self._backend,
            )
            await scanner.start()
        except (BleakError, OSError) as exc:
            raise BleError(f"cannot start BLE scanning ({mode}): {exc}") from exc
        self._scanner = scanner
        log.info("ble.scanning", mode=mode, backend=str(scanner.backend_id))

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with asyncio.timeout(10):
                await scanner.stop()
        except (BleakError, OSError, TimeoutError) as exc:
            log.warning("ble.stop_failed", error=str(exc))

    @property
    def is_scanning(self) -> bool:
        return self._scanner is not None

    async def __aenter__(self) -> BleScanner:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- fan-out ---------------------------------------------------------------------------
    def register(self, address: str, callback: AdvertisementCallback) -> Callable[[], None]:
        """Call ``callback`` for each advertisement from ``address``; returns the unregister function."""
        key = normalize_address(address)
        token = self._next_token
        self._next_token += 1
        self._callbacks.setdefault(key, {})[token] = callback

        def unregister() -> None:
            table = self._callbacks.get(key)
            if table is not None:
                table.pop(token, None)
                if not table:
                    del self._callbacks[key]

        return unregister

    def _on_detection(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.received += 1
        table = self._callbacks.get(normalize_address(device.address))
        if not table:
            return
        ad = Advertisement(
            address=normalize_address(device.address),
            rssi=adv.rssi,
            service_data={k.lower(): bytes(v) for k, v in adv.service_data.items()},
            manufacturer_data={k: bytes(v) for k, v in adv.manufacturer_data.items()},
            local_name=adv.local_name,
        )
        for callback in list(table.values()):
            try:
                callback(ad)
            except Exception:  # one driver's bug must not stop the radio for the others
                self.callback_errors += 1
                log.exception("ble.callback_failed", address=ad.address)

    # ---- GATT ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def connect(self, address: str, timeout: float = 10.0) -> AsyncIterator[GattLink]:
        """``async with scanner.connect(addr) as gatt: await gatt.read(uuid)`` — one link at a time."""
        async with self._connect_lock:
            client = BleakClient(normalize_address(address), timeout=timeout, backend=self._client_backend)
            try:
                async with asyncio.timeout(timeout):
                    await client.connect()
            except (BleakError, OSError, TimeoutError) as exc:
                raise BleError(f"{address}: cannot connect: {exc or 'timed out'}") from exc
            try:
                yield GattLink(client, timeout)
            finally:
                with contextlib.suppress(BleakError, OSError, TimeoutError):
                    async with asyncio.timeout(timeout):
                        await client.disconnect()


class GattLink:
    """Reads and writes on one connected peripheral; bleak errors become :class:`BleError`."""

    def __init__(self, client: BleakClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    @property
    def address(self) -> str:
        return self._client.address

    async def read(self, characteristic: str) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return bytes(await self._client.read_gatt_char(characteristic))
        except (BleakError, OSError, TimeoutError) as exc:
            raise BleError(f"{self.address}: read {characteristic} failed: {exc or 'timed out'}") from exc

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.write_gatt_char(characteristic, data, response=response)
        except (BleakError, OSError, TimeoutError) as exc:
            raise BleError(f"{self.address}: write {characteristic} failed: {exc or 'timed out'}") from exc
