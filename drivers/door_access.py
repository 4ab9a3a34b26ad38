"""Door access controllers on MQTT (card/PIN readers, door contact, exit button, lock relay).

Device protocol (JSON, UTF-8, at most 64 KiB; ``{base}`` is the device's ``transport.topic_base``)::

    controller -> {base}/event
      {"event": "card", "reader": "entry", "card": "12345", "facility": 17,
       "wiegand": {"bits": "0100010...", "length": 26}}      # card and/or wiegand (26 or 34 bits)
      {"event": "pin", "reader": "entry", "pin": "4711"}
      {"event": "door", "state": "open" | "closed"}          # door contact
      {"event": "exit_button", "reader": "exit"}             # request-to-exit
      {"event": "lock", "state": "locked" | "unlocked", "mode": "normal" | "held"}   # relay changed

    gateway -> {base}/cmd            {"id": "<correlation id>", "action": "unlock", "args": {"duration_s": 5}}
      actions: unlock (pulse for duration_s), lock, hold_unlocked, release (back to normal, locked)
    controller -> {base}/reply       {"id": "<same id>", "ok": true,
                                      "state": {"lock": "unlocked", "door": "closed", "mode": "normal"}}
                                  |  {"id": "<same id>", "ok": false, "error": "relay fault"}

The driver reports presentations (access decisions are the gateway's, elsewhere) and door state:
``access.presented``, ``door.opened``, ``door.closed``, ``door.forced_open`` (the contact opened while
the lock was locked and no exit button was pressed in the last ``exit_grace_s``; ``door.opened``
carries ``forced: true`` too), ``door.held_open`` (open longer than ``held_open_s``, not while held
unlocked). Timers run inside :meth:`MqttDoorDriver.listen` as deadlines, not tasks.

Card reads are decoded with :mod:`drivers.wiegand`; the MQTT plumbing is
:class:`drivers.transports.mqtt.MqttDeviceChannel`, shared with ``drivers.video_intercom``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from drivers.base import Reading
from drivers.mqtt_push import MqttPushDriver
from drivers.transports.mqtt import (
    MAX_PAYLOAD,
    describe_validation_error,
)
from drivers.wiegand import WiegandError, parse_wiegand

if TYPE_CHECKING:
    pass

__all__ = [
    "ControllerEvent",
    "DoorOptions",
    "MqttDoorDriver",
    "decode_wiegand",
]


def decode_wiegand(bits: str) -> tuple[int, int]:
    """A controller's Wiegand bit string (26 or 34 bits) -> (facility, card), parity checked."""
    if not bits or set(bits) - {"0", "1"}:
        raise WiegandError("Wiegand bits must be 0s and 1s")
    card = parse_wiegand(int(bits, 2), len(bits))
    return card.facility, card.card


# ==== Door controller wire model =================================================================
class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WiegandFrame(_Wire):
    bits: str = Field(pattern=r"^[01]{26}$|^[01]{34}$")
    length: int | None = None


class CardEvent(_Wire):
    event: Literal["card"]
    reader: str = Field(default="main", min_length=1, max_length=64)
    card: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    facility: int | None = Field(default=None, ge=0, le=65535)
    wiegand: WiegandFrame | None = None

    @model_validator(mode="after")
    def _has_credential(self) -> CardEvent:
        if self.card is None and self.wiegand is None:
            raise ValueError("card event needs card or wiegand")
        return self


class PinEvent(_Wire):
    event: Literal["pin"]
    reader: str = Field(default="main", min_length=1, max_length=64)
    pin: str = Field(pattern=r"^[0-9]{1,12}$")


class DoorEvent(_Wire):
    event: Literal["door"]
    state: Literal["open", "closed"]


class ExitEvent(_Wire):
    event: Literal["exit_button"]
    reader: str | None = Field(default=None, max_length=64)


class LockEvent(_Wire):
    event: Literal["lock"]
    state: Literal["locked", "unlocked"]
    mode: Literal["normal", "held"] | None = None


ControllerEvent = TypeAdapter(
    Annotated[CardEvent | PinEvent | DoorEvent | ExitEvent | LockEvent, Field(discriminator="event")]
)


class DoorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    held_open_s: float = Field(
        default=30.0, gt=0, le=3600, description="Open longer than this -> door.held_open"
    )
    exit_grace_s: float = Field(
        default=10.0, ge=0, le=120, description="An exit press authorises opening this long"
    )
    relock_grace_s: float = Field(
        default=2.0, ge=0, le=60, description="Opening this soon after the relay relocked is not forced"
    )
    reply_timeout_s: float = Field(default=3.0, gt=0, le=60)


# ==== Driver =====================================================================================
class MqttDoorDriver(MqttPushDriver):
    kind: ClassVar[str] = "door_access"
    Options: ClassVar[type[BaseModel]] = DoorOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.door: Literal["open", "closed"] | None = None
        self.lock: Literal["locked", "unlocked"] = "locked"
        self.mode: Literal["normal", "held"] = "normal"
        self._relocked_at = float("-inf")
        self._exit_at = float("-inf")
        self._opened_at: float | None = None
        self._held_reported = False
        self.presentations = 0

    def next_deadline(self) -> float | None:
        if self._opened_at is None or self._held_reported or self.mode == "held":
            return None
        held_open_s: float = self.options.held_open_s
        return self._opened_at + held_open_s

    def due(self, now: float) -> list[Reading]:
        """Timer events whose time has come (held open)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline or self._opened_at is None:
            return []
        self._held_reported = True
        return [
            Reading(
                "door.held_open",
                {"open_s": round(now - self._opened_at, 1), "limit_s": self.options.held_open_s},
            )
        ]

    def handle(self, payload: bytes, now: float) -> list[Reading]:
        """One controller event -> readings. Bad payloads are counted and logged, never raised."""
        if len(payload) > MAX_PAYLOAD:
            self.bad_payloads(f"event of {len(payload)} bytes is over {MAX_PAYLOAD}", payload[:200])
            return []
        try:
            event = ControllerEvent.validate_json(payload)
        except ValidationError as exc:
            self.bad_payloads(f"malformed event: {describe_validation_error(exc)}", payload)
            return []
        if isinstance(event, CardEvent):
            return self._card(event)
        if isinstance(event, PinEvent):
            self.presentations += 1
            return [
                Reading("access.presented", {"credential": "pin", "pin": event.pin, "reader": event.reader})
            ]
        if isinstance(event, ExitEvent):
            self._exit_at = now
            return []
        if isinstance(event, LockEvent):
            self._set_lock(event.state, event.mode, now)
            return []
        return self._door(event.state, now)

    def _card(self, event: CardEvent) -> list[Reading]:
        data: dict[str, Any] = {"credential": "card", "reader": event.reader}
        card, facility = event.card, event.facility
        if event.wiegand is not None:
            try:
                facility, number = decode_wiegand(event.wiegand.bits)
            except WiegandError as exc:
                self.bad_payloads(f"card read with bad Wiegand frame: {exc}", event.wiegand.bits.encode())
                return []
            if card is not None and int(card) != number:
                self.log.warning("door.card_mismatch", reported=card, decoded=number)
            card = str(number)
            data["format"] = f"wiegand{len(event.wiegand.bits)}"
        data["card"] = card
        if facility is not None:
            data["facility"] = facility
        self.presentations += 1
        return [Reading("access.presented", data)]

    def _set_lock(self, state: str, mode: str | None, now: float) -> None:
        if self.lock == "unlocked" and state == "locked":
            self._relocked_at = now
        self.lock = "unlocked" if state == "unlocked" else "locked"
        if mode is not None:
            self.mode = "held" if mode == "held" else "normal"

    def _door(self, state: Literal["open", "closed"], now: float) -> list[Reading]:
        if state == self.door:
            return []  # repeated report
        self.door = state
        if state == "closed":
            open_s = None if self._opened_at is None else round(now - self._opened_at, 1)
            self._opened_at = None
            self._held_reported = False
            return [Reading("door.closed", {"open_s": open_s})]
        self._opened_at = now
        self._held_reported = False
        authorised = (
            self.lock == "unlocked"
            or now - self._relocked_at <= self.options.relock_grace_s
            or now - self._exit_at <= self.options.exit_grace_s
        )
        out = [Reading("door.opened", {"forced": not authorised})]
        if not authorised:
            out.append(Reading("door.forced_open", {"lock": self.lock}))
        return out

    # ---- actions ---------------------------------------------------------------------------
    async def execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "unlock":
            cmd_args: dict[str, Any] = {"duration_s": float(args.get("duration_s", 5.0))}
        elif action in ("lock", "hold_unlocked", "release"):
            cmd_args = {}
        else:
            return await super().execute(action, args)
        state = await self.channel.request(action, cmd_args, self.options.reply_timeout_s)
        now = asyncio.get_running_loop().time()
        lock = state.get("lock")
        if lock in ("locked", "unlocked"):
            self._set_lock(lock, state.get("mode"), now)
        elif action in ("unlock", "hold_unlocked"):
            self._set_lock("unlocked", "held" if action == "hold_unlocked" else None, now)
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        return {
            "door": self.door,
            "lock": self.lock,
            "mode": self.mode,
            "presentations": self.presentations,
            "bad_payloads": self.bad_payloads.count,
            "dropped": self.channel.dropped if self._channel is not None else 0,
        }
