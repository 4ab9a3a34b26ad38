"""What every driver is: a device kind's points, events and actions over a shared transport.

A driver does device policy (what a limit switch means, when a gate counts as open); the transport
under it does the I/O, retries and timeouts. Drivers raise only the errors below, always naming the
device, so the supervisor can count them and carry on::

    DriverError
     ├── DeviceUnreachable   timeout, link down, no answer after the transport's retries
     ├── DeviceProtocolError exception response, CRC error, garbage, a value out of range
     └── ActionFailed        the device was reached but did not do what it was asked
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig


class DriverError(Exception):
    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"{device_id}: {message}")
        self.device_id = device_id
        self.reason = message


class DeviceUnreachable(DriverError):
    pass


class DeviceProtocolError(DriverError):
    pass


class ActionFailed(DriverError):
    pass


@dataclass(slots=True)
class Reading:
    """An event as a driver sees it; the gateway adds id, sequence, receive time and location."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


Emit = Callable[[Reading], Awaitable[None]]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Driver:
    """Base class. Polled drivers override :meth:`poll`; push drivers set ``polled = False`` and
    override :meth:`listen`, calling ``await self.emit(reading)`` as things happen."""

    kind: ClassVar[str]
    polled: ClassVar[bool] = True
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, config: DeviceConfig, hub: TransportHub, emit: Emit) -> None:
        self.config = config
        self.device_id = config.id
        self.hub = hub
        self.emit = emit
        self.options: Any = self.Options.model_validate(config.options)
        self.log = structlog.get_logger("steward.driver").bind(device=config.id, kind=self.kind)

    async def open(self) -> None:
        """Acquire transport resources (subscriptions, connections). Called once before polling."""

    async def close(self) -> None:
        """Release what open() took."""

    async def poll(self) -> list[Reading]:
        """Read the device once; return events for what changed. Raise DriverError on failure."""
        return []

    async def listen(self) -> None:
        """Push drivers: run until cancelled, emitting readings."""

    async def execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Perform an action (already validated against protocol.actions); return the state after."""
        raise ActionFailed(self.device_id, f"{self.kind} has no action {action!r}")

    def snapshot(self) -> dict[str, Any]:
        """The device's current state as last seen, for command results and status."""
        return {}

    def went_offline(self) -> None:
        """The supervisor reported ``device.offline``: what this driver last saw may be stale.

        Drivers that report a state snapshot on their first poll report it again on the first
        successful poll after this (which follows ``device.online``).
        """
