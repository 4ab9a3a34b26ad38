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

:class:`MqttDeviceChannel` — one device's event queue and correlated commands over the gateway's
shared MQTT client — is shared with ``drivers.video_intercom``.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from uuid import uuid4

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from drivers.base import ActionFailed, DeviceUnreachable, Driver, Reading
from steward.config import MqttTransport
from steward.mqtt import Message, MqttError

if TYPE_CHECKING:
    from steward.config import DeviceConfig
    from steward.mqtt import MqttClient

__all__ = [
    "MAX_PAYLOAD",
    "ControllerEvent",
    "DoorOptions",
    "MqttDeviceChannel",
    "MqttDoorDriver",
    "PayloadCounter",
    "WiegandError",
    "check_mqtt_config",
    "decode_wiegand",
    "describe_validation_error",
    "encode_wiegand",
]

MAX_PAYLOAD = 64 * 1024

_log = structlog.get_logger("steward.driver")


# ==== MQTT device channel (shared by the MQTT push drivers) ======================================
class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=64)
    ok: bool
    error: str | None = Field(default=None, max_length=500)
    state: dict[str, Any] = Field(default_factory=dict)


class _Router:
    """Routes one MqttClient's messages to channels by exact topic, without a task of its own.

    Every channel waiting for something takes a turn at reading the client's queue ("pumping"): the
    first waiter reads one message, hands it to the channel that owns its topic and wakes the other
    waiters, who check whether what they wait for has arrived. So a reply reaches ``execute()`` even
    while ``listen()`` is the one reading, and nothing runs once nobody waits.
    """

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.routes: dict[str, Callable[[Message], None]] = {}
        self.pumping = False
        self.waiters: set[asyncio.Future[None]] = set()
        self.unrouted = 0

    def dispatch(self, message: Message) -> None:
        handler = self.routes.get(message.topic)
        if handler is None:
            self.unrouted += 1
            return
        handler(message)

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def until(self, ready: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while not ready():
            if self.pumping:
                waiter = loop.create_future()
                self.waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self.waiters.discard(waiter)
                continue
            self.pumping = True
            try:
                self.dispatch(await self.client.get_message())
            finally:
                self.pumping = False
                self.wake()


_routers: weakref.WeakKeyDictionary[Any, _Router] = weakref.WeakKeyDictionary()


def _router_for(client: MqttClient) -> _Router:
    router = _routers.get(client)
    if router is None:
        router = _routers[client] = _Router(client)
    return router


class MqttDeviceChannel:
    """One MQTT device: its ``{base}/event`` messages in a bounded queue (oldest dropped), commands
    to ``{base}/cmd`` answered on ``{base}/reply`` with the same correlation id.

    ``request`` raises DeviceUnreachable (publish failed, no reply in time) or ActionFailed (the
    device said no). Oversized or malformed replies go to ``on_bad`` and are otherwise ignored.
    """

    def __init__(
        self,
        client: MqttClient,
        topic_base: str,
        device_id: str,
        *,
        on_bad: Callable[[str, bytes], None],
        queue_size: int = 256,
    ) -> None:
        self.client = client
        self.device_id = device_id
        self.event_topic = f"{topic_base}/event"
        self.cmd_topic = f"{topic_base}/cmd"
        self.reply_topic = f"{topic_base}/reply"
        self._router = _router_for(client)
        self._events: deque[Message] = deque(maxlen=queue_size)
        self._pending: dict[str, asyncio.Future[_Reply]] = {}
        self._on_bad = on_bad
        self._open = False
        self.dropped = 0

    async def open(self) -> None:
        if self._open:
            return
        for topic in (self.event_topic, self.reply_topic):
            other = self._router.routes.get(topic)
            if other is not None:
                raise DeviceUnreachable(self.device_id, f"topic {topic} is already taken by another device")
        self._router.routes[self.event_topic] = self._on_event
        self._router.routes[self.reply_topic] = self._on_reply
        self._open = True
        try:
            for topic in (self.event_topic, self.reply_topic):
                await self.client.subscribe(topic, qos=1)
        except MqttError as exc:
            await self.close()
            raise DeviceUnreachable(self.device_id, f"cannot subscribe to {topic}: {exc}") from exc

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        for topic in (self.event_topic, self.reply_topic):
            self._router.routes.pop(topic, None)
            try:
                await self.client.unsubscribe(topic)
            except (MqttError, OSError, ValueError):
                pass
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(DeviceUnreachable(self.device_id, "channel closed"))

    def _on_event(self, message: Message) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(message)

    def _on_reply(self, message: Message) -> None:
        if len(message.payload) > MAX_PAYLOAD:
            self._on_bad(
                f"reply of {len(message.payload)} bytes is over {MAX_PAYLOAD}", message.payload[:200]
            )
            return
        try:
            reply = _Reply.model_validate_json(message.payload)
        except ValidationError as exc:
            self._on_bad(f"malformed reply: {describe_validation_error(exc)}", message.payload[:200])
            return
        fut = self._pending.get(reply.id)
        if fut is None:
            _log.debug("mqtt_device.late_reply", device=self.device_id, id=reply.id)
        elif not fut.done():
            fut.set_result(reply)

    async def next_event(self) -> Message:
        await self._router.until(lambda: bool(self._events))
        return self._events.popleft()

    async def request(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a command, wait for its reply; return the reply's ``state``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        corr = uuid4().hex[:16]
        fut: asyncio.Future[_Reply] = loop.create_future()
        self._pending[corr] = fut
        body = json.dumps({"id": corr, "action": action, "args": args}).encode()
        try:
            # publish() has its own PUBACK timeout; it stays outside asyncio.timeout because Python
            # 3.11's wait_for inside it can swallow the cancel asyncio.timeout relies on.
            await self.client.publish(self.cmd_topic, body, qos=1, timeout=timeout)
            async with asyncio.timeout_at(deadline):
                await self._router.until(fut.done)
            reply = fut.result()
        except TimeoutError:
            raise DeviceUnreachable(self.device_id, f"no reply to {action} within {timeout:g}s") from None
        except MqttError as exc:
            raise DeviceUnreachable(self.device_id, f"cannot send {action}: {exc}") from exc
        finally:
            self._pending.pop(corr, None)
        if not reply.ok:
            raise ActionFailed(
                self.device_id, f"{action} refused by the device: {reply.error or 'no reason given'}"
            )
        return reply.state


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    return f"{where}: {err['msg']}"


class PayloadCounter:
    """Counts and logs bad device payloads: the first loudly, then every hundredth."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.count = 0

    def __call__(self, reason: str, sample: bytes) -> None:
        self.count += 1
        if self.count == 1 or self.count % 100 == 0:
            self.log.warning("device.bad_payload", reason=reason, sample=sample[:120].hex(), count=self.count)


def check_mqtt_config(device: DeviceConfig) -> list[str]:
    if not isinstance(device.transport, MqttTransport):
        return [f"{device.kind} over MQTT needs transport type mqtt"]
    return []


# ==== Wiegand ====================================================================================
class WiegandError(ValueError):
    pass


def decode_wiegand(bits: str) -> tuple[int, int]:
    """26-bit (8-bit facility, 16-bit card) or 34-bit (16/16) Wiegand, parity checked -> (facility, card)."""
    if set(bits) - {"0", "1"}:
        raise WiegandError("Wiegand bits must be 0s and 1s")
    n = len(bits)
    if n not in (26, 34):
        raise WiegandError(f"{n}-bit Wiegand; only 26 and 34 are supported")
    half = (n - 2) // 2
    first, second = bits[: half + 1], bits[half + 1 :]
    if first.count("1") % 2 != 0:
        raise WiegandError("even parity (leading bit) does not match")
    if second.count("1") % 2 != 1:
        raise WiegandError("odd parity (trailing bit) does not match")
    data = bits[1:-1]
    card_bits = 16
    return int(data[:-card_bits], 2), int(data[-card_bits:], 2)


def encode_wiegand(facility: int, card: int, length: int = 26) -> str:
    """The inverse of :func:`decode_wiegand` (simulators use it)."""
    if length not in (26, 34):
        raise WiegandError("only 26 and 34 bit Wiegand")
    fac_bits = 8 if length == 26 else 16
    if not 0 <= facility < 2**fac_bits or not 0 <= card < 2**16:
        raise WiegandError(f"facility/card out of range for {length}-bit Wiegand")
    data = f"{facility:0{fac_bits}b}{card:016b}"
    half = len(data) // 2
    lead = "1" if data[:half].count("1") % 2 else "0"
    trail = "0" if data[half:].count("1") % 2 else "1"
    return lead + data + trail


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
class MqttDoorDriver(Driver):
    kind: ClassVar[str] = "door_access"
    polled: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = DoorOptions

    check_config = staticmethod(check_mqtt_config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad_payloads = PayloadCounter(self.log)
        self._channel: MqttDeviceChannel | None = None
        self.door: Literal["open", "closed"] | None = None
        self.lock: Literal["locked", "unlocked"] = "locked"
        self.mode: Literal["normal", "held"] = "normal"
        self._relocked_at = float("-inf")
        self._exit_at = float("-inf")
        self._opened_at: float | None = None
        self._held_reported = False
        self.presentations = 0

    @property
    def channel(self) -> MqttDeviceChannel:
        if self._channel is None:
            t = self.config.transport
            if not isinstance(t, MqttTransport):
                raise TypeError(f"{self.device_id}: the MQTT door driver needs an mqtt transport")
            self._channel = MqttDeviceChannel(
                self.hub.mqtt, t.topic_base, self.device_id, on_bad=self.bad_payloads
            )
        return self._channel

    async def open(self) -> None:
        await self.channel.open()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    # ---- events ----------------------------------------------------------------------------
    async def listen(self) -> None:
        await self.open()
        loop = asyncio.get_running_loop()
        while True:
            message: Message | None = None
            try:
                async with asyncio.timeout_at(self._next_deadline()):
                    message = await self.channel.next_event()
            except TimeoutError:
                pass
            readings = self.due(loop.time())
            if message is not None:
                readings += self.handle(message.payload, loop.time())
            for reading in readings:
                await self.emit(reading)

    def _next_deadline(self) -> float | None:
        if self._opened_at is None or self._held_reported or self.mode == "held":
            return None
        held_open_s: float = self.options.held_open_s
        return self._opened_at + held_open_s

    def due(self, now: float) -> list[Reading]:
        """Timer events whose time has come (held open)."""
        deadline = self._next_deadline()
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
