"""Door access through a Modbus I/O module with a Wiegand reader interface (polled).

Register map, as the installer wires it (one unit per door)::

    coil 0              lock relay            True = released (unlocked), False = locked
    discrete input 0    door contact          True = open
    discrete input 1    exit button           True while pressed (request-to-exit)
    holding 0           card sequence         +1 (mod 65536) on every card presentation
    holding 1           card bit length       26 or 34
    holding 2-5         raw Wiegand frame     uint64 ABCD, first bit transmitted = highest bit
                                              (a 34-bit frame does not fit a uint32, hence 4 registers)
    holding 6           PIN sequence          +1 on every PIN entered on the keypad
    holding 7-8         PIN digits            uint32 ABCD (so leading zeros are not kept)
    holding 9           exit-button counter   +1 per press (DI counter mode), so a press shorter than
                                              the poll interval is still seen; 0 if not wired

Each poll reads the coil, both inputs and holding 0-9 (three requests) and reports edges only;
the first poll is a baseline. A card whose Wiegand frame does not decode (parity, length) is not
a presentation: it is logged, counted in ``read_errors`` and reported as ``access.read_error``.

Events: ``access.presented`` (``credential``, ``card``, ``facility``, ``card_number``, ``number``,
``raw``, ``bits``, ``format``, ``reader`` = device id; or ``pin``), ``access.read_error``,
``door.opened`` (``forced``), ``door.closed`` (``open_s``), ``door.forced_open`` (opened while
the relay was locked, not within ``relock_grace_s`` of a relock and not within ``exit_grace_s`` of
an exit press), ``door.held_open`` (open longer than ``held_open_s``, once per opening, not while
held unlocked), ``door.relock_failed`` (the pulse timer could not re-lock the relay).

Actions: ``unlock`` releases the relay for ``duration_s`` then re-locks it; the re-lock is a timer
task on the gateway, replaced by any later action and cancelled by :meth:`close`. (If the gateway
dies mid-pulse the door stays released; I/O modules with a hardware pulse mode avoid that.)
``lock``, ``hold_unlocked`` (released until ``release``), ``release`` (locked, normal mode). Every
action reads the coil back and raises :class:`ActionFailed` if the relay did not follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import ActionFailed, Driver, DriverError, Emit, Reading
from drivers.transports import codec
from drivers.wiegand import WiegandError, parse_wiegand
from steward.config import ModbusRtuTransport, ModbusTcpTransport

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig

__all__ = ["DoorInputs", "ModbusDoorDriver", "ModbusDoorOptions"]

COIL_LOCK = 0
DI_DOOR, DI_EXIT = 0, 1
DI_COUNT = 2
HR_CARD_SEQ, HR_CARD_BITS, HR_CARD_RAW = 0, 1, 2
HR_PIN_SEQ, HR_PIN = 6, 7
HR_EXIT_COUNT = 9
HR_COUNT = 10


class ModbusDoorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    held_open_s: float = Field(
        default=30.0, gt=0, le=3600, description="Open longer than this -> door.held_open"
    )
    exit_grace_s: float = Field(
        default=10.0, ge=0, le=120, description="An exit press authorises opening this long"
    )
    relock_grace_s: float = Field(
        default=2.0, ge=0, le=60, description="Opening this soon after a relock is not forced"
    )


@dataclass(frozen=True, slots=True)
class DoorInputs:
    """One poll's worth of the module's state, decoded."""

    released: bool
    door_open: bool
    exit_pressed: bool
    card_seq: int
    card_bits: int
    card_raw: int
    pin_seq: int
    pin: int
    exit_count: int


def decode_inputs(coil: list[bool], discrete: list[bool], holding: list[int]) -> DoorInputs:
    """Pure: the three reads of a poll -> :class:`DoorInputs` (raises CodecError on bad registers)."""
    return DoorInputs(
        released=bool(coil[COIL_LOCK]),
        door_open=bool(discrete[DI_DOOR]),
        exit_pressed=bool(discrete[DI_EXIT]),
        card_seq=holding[HR_CARD_SEQ],
        card_bits=holding[HR_CARD_BITS],
        card_raw=int(codec.decode_raw(holding[HR_CARD_RAW : HR_CARD_RAW + 4], "uint64")),
        pin_seq=holding[HR_PIN_SEQ],
        pin=int(codec.decode_raw(holding[HR_PIN : HR_PIN + 2], "uint32")),
        exit_count=holding[HR_EXIT_COUNT],
    )


class ModbusDoorDriver(Driver):
    kind: ClassVar[str] = "door_access"
    Options: ClassVar[type[BaseModel]] = ModbusDoorOptions

    def __init__(self, config: DeviceConfig, hub: TransportHub, emit: Emit) -> None:
        super().__init__(config, hub, emit)
        transport = config.transport
        if not isinstance(transport, ModbusTcpTransport | ModbusRtuTransport):
            raise TypeError(f"{config.id}: door_access over Modbus needs a Modbus transport")
        self.unit = transport.unit
        self.bus = hub.modbus(transport)
        self._inputs: DoorInputs | None = None
        self._updated: float | None = None
        self.mode: Literal["normal", "held"] = "normal"
        self._opened_at: float | None = None
        self._held_reported = False
        self._exit_at = float("-inf")
        self._relocked_at = float("-inf")
        self.read_errors = 0
        self.presentations = 0
        # poll() and execute() run concurrently: state comparison is atomic under _state_lock;
        # actions (and the re-lock timer's write) are serialised under _action_lock.
        self._state_lock = asyncio.Lock()
        self._action_lock = asyncio.Lock()
        self._relock: asyncio.Task[None] | None = None
        self._relock_due: float | None = None

    @classmethod
    def check_config(cls, dev: DeviceConfig) -> list[str]:
        if not isinstance(dev.transport, ModbusTcpTransport | ModbusRtuTransport):
            return [f"door_access over Modbus needs a modbus transport, not {dev.transport.type}"]
        return []

    async def close(self) -> None:
        task, self._relock = self._relock, None
        self._relock_due = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ reading

    async def _read(self) -> DoorInputs:
        coil = await self.bus.read_coils(self.unit, COIL_LOCK, 1, self.device_id)
        discrete = await self.bus.read_discrete(self.unit, 0, DI_COUNT, self.device_id)
        holding = await self.bus.read_holding(self.unit, 0, HR_COUNT, self.device_id)
        return decode_inputs(coil, discrete, holding)

    async def poll(self) -> list[Reading]:
        async with self._state_lock:
            new = await self._read()
            now = time.monotonic()
            old, self._inputs = self._inputs, new
            self._updated = time.time()
            return self._changes(old, new, now)

    def _changes(self, old: DoorInputs | None, new: DoorInputs, now: float) -> list[Reading]:
        if old is None:
            # Baseline: old counters are history, not news; an open door starts its held-open clock.
            if new.door_open:
                self._opened_at = now
            if new.exit_pressed:
                self._exit_at = now
            return []
        out: list[Reading] = []
        if old.released and not new.released:
            self._relocked_at = now
        if new.exit_pressed or new.exit_count != old.exit_count:
            self._exit_at = now  # pressed now, or pressed and let go since the last poll
        if new.card_seq != old.card_seq:
            out.append(self._card(new, (new.card_seq - old.card_seq) % 65536))
        if new.pin_seq != old.pin_seq:
            self.presentations += 1
            out.append(
                Reading(
                    "access.presented", {"credential": "pin", "pin": str(new.pin), "reader": self.device_id}
                )
            )
        if new.door_open and not old.door_open:
            out.extend(self._opened(new, now))
        elif old.door_open and not new.door_open:
            open_s = None if self._opened_at is None else round(now - self._opened_at, 1)
            self._opened_at = None
            self._held_reported = False
            out.append(Reading("door.closed", {"open_s": open_s}))
        if new.door_open and self._held_due(now):
            assert self._opened_at is not None
            self._held_reported = True
            out.append(
                Reading(
                    "door.held_open",
                    {"open_s": round(now - self._opened_at, 1), "limit_s": self.options.held_open_s},
                )
            )
        for r in out:
            self.log.info("door event", type=r.type)
        return out

    def _card(self, new: DoorInputs, seen: int) -> Reading:
        if seen > 1:
            self.log.warning("card presentations missed between polls", missed=seen - 1)
        try:
            card = parse_wiegand(new.card_raw, new.card_bits)
        except WiegandError as exc:
            self.read_errors += 1
            self.log.warning("bad card read", reason=str(exc), raw=new.card_raw, bits=new.card_bits)
            return Reading(
                "access.read_error",
                {"reader": self.device_id, "bits": new.card_bits, "raw": new.card_raw, "reason": str(exc)},
            )
        self.presentations += 1
        return Reading(
            "access.presented",
            {
                "credential": "card",
                "card": str(card.card),
                "facility": card.facility,
                "card_number": card.card_number,
                "number": card.number,
                "raw": card.raw,
                "bits": card.bits,
                "format": card.format,
                "reader": self.device_id,
            },
        )

    def _opened(self, new: DoorInputs, now: float) -> list[Reading]:
        self._opened_at = now
        self._held_reported = False
        authorised = (
            new.released
            or now - self._relocked_at <= self.options.relock_grace_s
            or now - self._exit_at <= self.options.exit_grace_s
        )
        out = [Reading("door.opened", {"forced": not authorised})]
        if not authorised:
            out.append(Reading("door.forced_open", {"lock": "locked"}))
        return out

    def _held_due(self, now: float) -> bool:
        if self._opened_at is None or self._held_reported or self.mode == "held":
            return False
        limit: float = self.options.held_open_s
        return now - self._opened_at >= limit

    def snapshot(self) -> dict[str, Any]:
        i = self._inputs
        relock_in = (
            None if self._relock_due is None else max(0.0, round(self._relock_due - time.monotonic(), 1))
        )
        return {
            "lock": "unknown" if i is None else ("unlocked" if i.released else "locked"),
            "door": "unknown" if i is None else ("open" if i.door_open else "closed"),
            "mode": self.mode,
            "relock_in_s": relock_in,
            "presentations": self.presentations,
            "read_errors": self.read_errors,
            "updated_at": self._updated,
        }

    # ------------------------------------------------------------------ actions

    async def _set_relay(self, released: bool) -> None:
        """Write the relay coil and read it back; ActionFailed if the relay did not follow."""
        await self.bus.write_coil(self.unit, COIL_LOCK, released, self.device_id)
        got = (await self.bus.read_coils(self.unit, COIL_LOCK, 1, self.device_id))[0]
        if got != released:
            want = "released" if released else "locked"
            raise ActionFailed(self.device_id, f"lock relay did not follow: wrote {want}, reads back {got}")
        async with self._state_lock:
            i = self._inputs
            if i is not None and i.released != released:
                if not released:
                    self._relocked_at = time.monotonic()
                self._inputs = dataclasses.replace(i, released=released)

    def _cancel_relock(self) -> None:
        if self._relock is not None:
            self._relock.cancel()
            self._relock = None
        self._relock_due = None

    async def execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action not in ("unlock", "lock", "hold_unlocked", "release"):
            return await super().execute(action, args)
        self.log.info("door action", action=action)
        async with self._action_lock:
            # A timer waiting for the lock is cancelled here; one mid-write has already finished.
            self._cancel_relock()
            if action == "unlock":
                duration = float(args.get("duration_s", 5.0))
                self.mode = "normal"
                await self._set_relay(True)
                self._relock_due = time.monotonic() + duration
                self._relock = asyncio.get_running_loop().create_task(
                    self._relock_after(duration), name=f"{self.device_id}-relock"
                )
            elif action == "hold_unlocked":
                await self._set_relay(True)
                self.mode = "held"
            else:  # lock, release
                await self._set_relay(False)
                self.mode = "normal"
        return self.snapshot()

    async def _relock_after(self, duration: float) -> None:
        await asyncio.sleep(duration)
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                async with self._action_lock:
                    await self._set_relay(False)
                    self._relock = None
                    self._relock_due = None
                self.log.info("door relocked after pulse", duration_s=duration)
                return
            except DriverError as exc:
                self.log.error("relock failed", attempt=attempt, reason=exc.reason)
                if attempt == attempts:
                    self._relock = None
                    self._relock_due = None
                    await self.emit(Reading("door.relock_failed", {"reason": exc.reason}))
                    return
                await asyncio.sleep(0.2 * attempt)
