"""The live stream across cloud instances: what one instance's hub publishes, the others' hubs get too.

With several instances sharing ingest (``shared_subscription``), a gateway's batch, a command's result or
a gateway's status is handled by one of them, while the operator's console streams (SSE) from another,
and a long-poll on a command may wait on a third. The hub is in-process, so without this the console
missed whatever another instance ingested, and a long-poll learned of a result only at its next
periodic re-read of the store.

Each instance publishes its hub's messages on one broker topic, ``{prefix}/cloud/fanout``, a burst
coalesced into one MQTT message (a stored batch's events leave together), and hands what the other
instances publish to its own hub, which delivers them to its streams and long-polls but never sends them
on again. QoS 0: this is a live view, not a record. A message lost while the broker is away costs a
console a refresh; the store has everything (consoles reload their lists, long-polls re-read it).

Only the cloud's broker account may publish or subscribe there (``steward.broker_auth``); a gateway's
account cannot reach the topic, so it cannot forge a command update or an event on another estate's
console. A broker whose ACL predates this topic may refuse the subscription (amqtt) or grant it and
then deliver nothing (Mosquitto 2.0), so after subscribing each instance sends itself a probe and
waits for it: without it, ``fanout.not_delivered`` says to re-render the ACL (``steward cloud
broker-config``), and the check is repeated until it passes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Literal

import pydantic_core
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.settings import CloudSettings
from protocol.topics import cloud_fanout_topic
from steward.mqtt import MqttClient, MqttError

log = structlog.get_logger("steward.cloud.fanout")

FANOUT_VERSION = 1
# Messages waiting to leave while the broker is away (then the oldest go): a live view needs no more.
MAX_PENDING = 10_000
# One MQTT message carries at most about this much; a large burst leaves as several.
CHUNK_BYTES = 256 * 1024
PROBE_TIMEOUT_S = 5.0  # our own probe must come back within this
RETRY_S = 30.0  # then the subscription and probe are tried again


class FanoutMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["event", "command", "gateway", "work_order"]
    data: dict[str, Any]

    @model_validator(mode="after")
    def _command_has_id(self) -> FanoutMessage:
        # The hub wakes a command's long-polls by its id.
        if self.kind == "command" and not isinstance(self.data.get("id"), str):
            raise ValueError("a command update needs its id")
        return self


class FanoutBatch(BaseModel):
    """One MQTT message on the fan-out topic: what ``instance``'s hub published, in order (none: a probe)."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = FANOUT_VERSION
    instance: str = Field(min_length=1, max_length=64)
    messages: list[FanoutMessage]


class Fanout:
    """Run with :meth:`run` (until cancelled); it installs itself as ``hub.forward`` meanwhile."""

    def __init__(self, settings: CloudSettings, hub: Hub, metrics: Metrics) -> None:
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.instance = settings.client_id
        self.topic = cloud_fanout_topic(settings.topic_prefix)
        # A connection of its own: never queued behind an ingest backlog, and never holding one up.
        self.mqtt = MqttClient(
            settings.broker_host,
            settings.broker_port,
            client_id=f"{settings.client_id}-fanout",
            username=settings.broker_username,
            password=settings.broker_password.get_secret_value() if settings.broker_password else None,
        )
        self._pending: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._head = pydantic_core.to_json({"v": FANOUT_VERSION, "instance": self.instance})[:-1]
        self._echo = asyncio.Event()  # set when one of our own messages comes back from the broker
        self.log = log.bind(instance=self.instance, topic=self.topic)

    def forward(self, kind: str, data: dict[str, Any]) -> None:
        """The hub's hook: called for each message it publishes that did not come from another instance."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.metrics.fanout_dropped += 1
        # Encoded now: the data may be a dict its publisher goes on to change.
        self._pending.append(pydantic_core.to_json({"kind": kind, "data": data}))
        self._wake.set()

    async def run(self) -> None:
        self.mqtt.start()
        self.hub.forward = self.forward
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send(), name="cloud-fanout-send")
                tg.create_task(self._subscribe(), name="cloud-fanout-subscribe")
                await self._receive()
        finally:
            self.hub.forward = None
            self.metrics.fanout_ready = False
            await self.mqtt.disconnect()

    async def _subscribe(self) -> None:
        """Subscribe, and prove that the broker delivers the topic by sending ourselves a probe."""
        while True:
            await self.mqtt.wait_connected(timeout=None)
            try:
                # Remembered by the client and renewed after every reconnect from now on.
                await self.mqtt.subscribe(self.topic, qos=0)
                self._echo.clear()
                await self.mqtt.publish(self.topic, self._head + b',"messages":[]}', qos=0)
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await self._echo.wait()
            except (MqttError, TimeoutError) as exc:
                self.log.error(
                    "fanout.not_delivered",
                    error=str(exc) or f"our probe did not come back within {PROBE_TIMEOUT_S:.0f} s",
                    hint="consoles miss what other instances ingest; the broker's ACL may predate "
                    "the topic: steward cloud broker-config",
                    retry_in_s=RETRY_S,
                )
                await asyncio.sleep(RETRY_S)
                continue
            self.metrics.fanout_ready = True
            self.log.info("fanout.ready")
            return

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.mqtt.is_connected:
                # Stale by the time the link is back: consoles reload, long-polls re-read the store.
                self.metrics.fanout_dropped += len(self._pending)
                self._pending.clear()
                continue
            while self._pending:
                payload = self._take_chunk()
                try:
                    await self.mqtt.publish(self.topic, payload, qos=0)
                except MqttError as exc:
                    self.log.warning("fanout.publish_failed", error=str(exc))
                else:
                    self.metrics.fanout_sent += 1

    def _take_chunk(self) -> bytes:
        parts: list[bytes] = []
        size = len(self._head)
        while self._pending and (not parts or size + len(self._pending[0]) < CHUNK_BYTES):
            part = self._pending.popleft()
            parts.append(part)
            size += len(part) + 1
        return self._head + b',"messages":[' + b",".join(parts) + b"]}"

    async def _receive(self) -> None:
        async for message in self.mqtt.messages():
            if message.topic != self.topic:
                continue
            try:
                batch = FanoutBatch.model_validate_json(message.payload)
            except ValidationError as exc:
                self.metrics.fanout_refused += 1
                first = exc.errors(include_url=False)[0]
                self.log.warning(
                    "fanout.bad_message",
                    where=".".join(map(str, first["loc"])),
                    error=first["msg"][:300],
                    bytes=len(message.payload),
                )
                continue
            if batch.instance == self.instance:
                self._echo.set()  # our own, back from the broker
                continue
            self.metrics.fanout_received += 1
            for item in batch.messages:
                self.hub.publish(item.kind, item.data, forwarded=True)


__all__ = ["Fanout", "FanoutBatch", "FanoutMessage"]
