"""A door access controller on a real MQTT broker, speaking ``drivers.door_access``'s protocol.

It has a card reader (Wiegand 26/34), a keypad, a door contact, an exit button and a lock relay.
Script it: ``present_card(12345)``, ``present_pin("4711")``, ``open_door()``, ``close_door()``,
``press_exit()``. Commands drive the relay: ``unlock`` pulses it for ``duration_s`` (relocking on its
own, announced with a ``lock`` event), ``hold_unlocked`` keeps it open until ``release``, ``lock``
relocks at once. ``sim.refuse["unlock"] = "relay fault"`` refuses; ``sim.silent = True`` stops replying.
The controller makes no access decisions: a card read unlocks nothing by itself.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from drivers.wiegand import build_wiegand
from simulators.push import MqttDeviceSimulator
from steward.config import DeviceConfig

__all__ = [
    "DoorControllerSimulator",
]


class DoorControllerSimulator(MqttDeviceSimulator):
    kind = "door_access"

    def __init__(
        self,
        device: DeviceConfig,
        broker_host: str = "127.0.0.1",
        broker_port: int = 1883,
        *,
        exit_pulse_s: float = 5.0,
    ) -> None:
        super().__init__(device, broker_host, broker_port)
        self.exit_pulse_s = exit_pulse_s
        self.door: Literal["open", "closed"] = "closed"
        self.lock: Literal["locked", "unlocked"] = "locked"
        self.mode: Literal["normal", "held"] = "normal"
        self.relock_at: float | None = None  # event-loop time the pulse ends
        self.pulses = 0

    # ---- scripting -------------------------------------------------------------------------
    async def present_card(
        self, number: int, *, facility: int = 0, reader: str = "entry", length: Literal[26, 34] = 26
    ) -> None:
        bits = format(build_wiegand(facility, number, length), f"0{length}b")
        await self.publish_event(
            {
                "event": "card",
                "reader": reader,
                "card": str(number),
                "facility": facility,
                "wiegand": {"bits": bits, "length": length},
            }
        )

    async def present_pin(self, pin: str, *, reader: str = "entry") -> None:
        await self.publish_event({"event": "pin", "reader": reader, "pin": pin})

    async def open_door(self) -> None:
        self.door = "open"
        await self.publish_event({"event": "door", "state": "open"})

    async def close_door(self) -> None:
        self.door = "closed"
        await self.publish_event({"event": "door", "state": "closed"})

    async def press_exit(self, *, reader: str = "exit") -> None:
        """Request-to-exit: announced, then the relay pulses for ``exit_pulse_s``."""
        await self.publish_event({"event": "exit_button", "reader": reader})
        await self._pulse(self.exit_pulse_s)

    # ---- relay -----------------------------------------------------------------------------
    async def _set_lock(self, lock: Literal["locked", "unlocked"], mode: Literal["normal", "held"]) -> None:
        changed = (lock, mode) != (self.lock, self.mode)
        self.lock, self.mode = lock, mode
        if changed:
            await self.publish_event({"event": "lock", "state": lock, "mode": mode})

    async def _pulse(self, duration_s: float) -> None:
        if self.mode == "held":
            return  # already open, stays open
        self.pulses += 1
        self.relock_at = asyncio.get_running_loop().time() + duration_s
        self.reschedule()
        await self._set_lock("unlocked", "normal")

    def next_deadline(self) -> float | None:
        return self.relock_at

    async def on_deadline(self, now: float) -> None:
        if self.relock_at is not None and now >= self.relock_at:
            self.relock_at = None
            await self._set_lock("locked", "normal")

    async def on_command(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "unlock":
            duration = float(args.get("duration_s", 5.0))
            if not 0 < duration <= 300:
                raise ValueError(f"duration_s {duration} out of range")
            await self._pulse(duration)
        elif action == "lock":
            self.relock_at = None
            await self._set_lock("locked", "normal")
        elif action == "hold_unlocked":
            self.relock_at = None
            await self._set_lock("unlocked", "held")
        elif action == "release":
            self.relock_at = None
            await self._set_lock("locked", "normal")
        else:
            raise ValueError(f"unknown action {action!r}")
        return self._reply_state()

    def _reply_state(self) -> dict[str, Any]:
        return {"lock": self.lock, "door": self.door, "mode": self.mode}

    def state(self) -> dict[str, Any]:
        return {**self._reply_state(), "pulses": self.pulses, "relock_pending": self.relock_at is not None}
