"""A video intercom door station on a real MQTT broker, speaking ``drivers.video_intercom``'s protocol.

Script it: ``await sim.call("apartment", "3-1-1202")``, ``await sim.answer()``, ``await sim.hang_up()``.
It obeys ``unlock`` (sets :attr:`door_unlocked_until`) and ``hangup`` (ends the active call,
publishing ``ended`` with reason ``remote``). ``sim.refuse["unlock"] = "lock fault"`` makes it refuse;
``sim.silent = True`` makes it stop replying.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from simulators.push import MqttDeviceSimulator
from steward.config import DeviceConfig

__all__ = [
    "IntercomSimulator",
]


class IntercomSimulator(MqttDeviceSimulator):
    kind = "video_intercom"

    def __init__(self, device: DeviceConfig, broker_host: str = "127.0.0.1", broker_port: int = 1883) -> None:
        super().__init__(device, broker_host, broker_port)
        self.call_id: str | None = None
        self.call_target: str | None = None
        self.apartment: str | None = None
        self.answered = False
        self.door_unlocked_until: datetime | None = None
        self.unlocks = 0
        self._ids = itertools.count(1)

    @property
    def door_unlocked(self) -> bool:
        return self.door_unlocked_until is not None and datetime.now(UTC) < self.door_unlocked_until

    # ---- scripting -------------------------------------------------------------------------
    async def call(
        self, target: Literal["centre", "apartment"] = "centre", apartment: str | None = None
    ) -> str:
        """A visitor presses call; returns the call id."""
        if self.call_id is not None:
            await self.hang_up("replaced")
        call_id = f"{self.device.id}-{next(self._ids)}"
        self.call_id, self.call_target, self.apartment, self.answered = call_id, target, apartment, False
        event: dict[str, Any] = {"event": "call", "call_id": call_id, "target": target}
        if apartment is not None:
            event["apartment"] = apartment
        await self.publish_event(event)
        return call_id

    async def answer(self, by: str | None = None) -> None:
        if self.call_id is None:
            raise RuntimeError("no call to answer")
        self.answered = True
        await self.publish_event({"event": "answered", "call_id": self.call_id, "by": by or self.call_target})

    async def hang_up(self, reason: str = "caller") -> None:
        if self.call_id is None:
            return
        call_id, self.call_id, self.answered = self.call_id, None, False
        await self.publish_event({"event": "ended", "call_id": call_id, "reason": reason})

    # ---- commands --------------------------------------------------------------------------
    async def on_command(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "unlock":
            duration = float(args.get("duration_s", 5.0))
            if not 0 < duration <= 300:
                raise ValueError(f"duration_s {duration} out of range")
            self.door_unlocked_until = datetime.now(UTC) + timedelta(seconds=duration)
            self.unlocks += 1
        elif action == "hangup":
            wanted = args.get("call_id")
            if self.call_id is None or (wanted is not None and wanted != self.call_id):
                raise ValueError("no such active call")
            await self.hang_up("remote")
        else:
            raise ValueError(f"unknown action {action!r}")
        return self._reply_state()

    def _reply_state(self) -> dict[str, Any]:
        until = self.door_unlocked_until
        return {"door_unlocked_until": until.isoformat() if until else None, "call": self.call_id}

    def state(self) -> dict[str, Any]:
        return {
            **self._reply_state(),
            "door_unlocked": self.door_unlocked,
            "answered": self.answered,
            "target": self.call_target,
            "apartment": self.apartment,
            "unlocks": self.unlocks,
        }
