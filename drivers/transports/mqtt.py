"""MQTT devices over the gateway's one shared client: per-device event queues and correlated commands.

Every MQTT driver borrows :class:`MqttDeviceChannel` for its ``transport.topic_base``: events from the
device land on that device's bounded queue (routed by exact topic, so two devices never steal each
other's messages), and ``request()`` publishes a command with a correlation id and waits for the
device's reply with a timeout. Payloads over :data:`MAX_PAYLOAD` are dropped and counted.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.base import ActionFailed, DeviceUnreachable
from steward.config import MqttTransport
from steward.mqtt import Message, MqttError

if TYPE_CHECKING:
    from steward.config import DeviceConfig
    from steward.mqtt import MqttClient

__all__ = [
    "MAX_PAYLOAD",
    "MqttDeviceChannel",
    "PayloadCounter",
    "check_mqtt_config",
    "describe_validation_error",
]

MAX_PAYLOAD = 64 * 1024

_log = structlog.get_logger("steward.driver")


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
