"""What every simulator is: a device that speaks its real protocol on a real port and can be scripted."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self


class Simulator(ABC):
    """Start with ``async with sim:`` (or start()/stop()); script it through its own methods."""

    kind: ClassVar[str]

    @abstractmethod
    async def start(self) -> None:
        """Bind the device's port and start its behaviour."""

    async def stop(self) -> None:
        """Release the port and stop background behaviour; safe to call twice."""

    def state(self) -> dict[str, Any]:
        """What the device is doing now, for tests, the demo and `steward sim run`."""
        return {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
