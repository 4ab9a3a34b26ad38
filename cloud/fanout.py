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

Events are most of the traffic, and building and sending them cost ingest some 15 µs each: an instance
sends an estate's events only while another says a stream there reads them. Each message carries its
sender's count of open streams (``listeners``) and the estates whose events they read (``sites``; absent:
every estate's, as a version 1 sender means it); an instance with streams open repeats it every
``PRESENCE_EVERY_S``, says at once when a stream opens or closes, and is believed for ``PRESENCE_TTL_S``.
With consoles each open on one estate, an estate nobody watches costs the fan-out nothing. Command,
gateway and work-order updates always go (long-polls wait on commands elsewhere; they are few).

Version 2 added ``sites``. A version 1 instance refuses a version 2 message (``fanout.bad_message``), so
during a rolling upgrade from it the live view from upgraded instances to the others pauses until all
run version 2 (consoles there refresh, long-polls re-read the store); version 2 takes version 1's
messages and ignores fields it does not know, so later additions need no such pause.

Only the cloud's broker account may publish or subscribe there (``steward.broker_auth``); a gateway's
account cannot reach the topic, so it cannot forge a command update or an event on another estate's
console. A broker whose ACL predates this topic may refuse the subscription (amqtt) or grant it and
then deliver nothing (Mosquitto 2.0), so after subscribing each instance sends itself a probe and
waits for it: without it, ``fanout.not_delivered`` says to re-render the ACL (``steward cloud
broker-config``), and the check is repeated until it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Annotated, Any, Final, Literal

import pydantic_core
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.settings import CloudSettings
from protocol.topics import cloud_fanout_topic
from steward.mqtt import MqttClient, MqttError

log = structlog.get_logger("steward.cloud.fanout")

FANOUT_VERSION: Final = 2
# Messages waiting to leave while the broker is away (then the oldest go): a live view needs no more.
MAX_PENDING = 10_000
# One MQTT message carries at most about this much; a large burst leaves as several.
CHUNK_BYTES = 256 * 1024
PROBE_TIMEOUT_S = 5.0  # our own probe must come back within this
RETRY_S = 30.0  # then the subscription and probe are tried again
PRESENCE_EVERY_S = 5.0  # while streams are open here, the others are told this often
PRESENCE_TTL_S = 3 * PRESENCE_EVERY_S  # an instance that said so is believed this long
MAX_SITES = 10_000  # estates one instance's streams may name in its presence


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

    # A later version may add fields: they are ignored, not refused (version 1 refused them).
    model_config = ConfigDict(extra="ignore")
    v: Literal[1, 2] = FANOUT_VERSION
    instance: str = Field(min_length=1, max_length=64)
    listeners: int = Field(default=0, ge=0, description="streams open on that instance when it sent this")
    sites: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=MAX_SITES,
        description="the estates whose events its streams read; absent: every estate's",
    )
    messages: list[FanoutMessage]

    def presence(self) -> frozenset[str] | None:
        """What the sender's streams read: None, every estate's events; else these estates' (maybe none)."""
        return None if self.sites is None else frozenset(self.sites)


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
        self._echo = asyncio.Event()  # set when one of our own messages comes back from the broker
        # Instances that said streams are open there -> until when (monotonic) that is believed, and the
        # estates whose events they read (None: every estate's).
        self._peers: dict[str, tuple[float, frozenset[str] | None]] = {}
        self.log = log.bind(instance=self.instance, topic=self.topic)

    def forward(self, kind: str, data: dict[str, Any]) -> None:
        """The hub's hook: called for each message it publishes that did not come from another instance."""
        if kind == "event" and not self.peer_wants(data.get("site_id")):
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.metrics.fanout_dropped += 1
        # Encoded now: the data may be a dict its publisher goes on to change.
        self._pending.append(pydantic_core.to_json({"kind": kind, "data": data}))
        self._wake.set()

    def peers_listening(self) -> int:
        """How many other instances have a stream open, as they last said."""
        now = time.monotonic()
        return sum(1 for until, _ in self._peers.values() if until > now)

    def peer_wants(self, site: str | None) -> bool:
        """Whether another instance has a stream open that reads ``site``'s events (None: any stream)."""
        now = time.monotonic()
        for until, sites in self._peers.values():
            if until > now and (site is None or sites is None or site in sites):
                return True
        return False

    async def run(self) -> None:
        self.mqtt.start()
        self.hub.forward, self.hub.remote_wants = self.forward, self.peer_wants
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send(), name="cloud-fanout-send")
                tg.create_task(self._subscribe(), name="cloud-fanout-subscribe")
                tg.create_task(self._presence(), name="cloud-fanout-presence")
                await self._receive()
        finally:
            self.hub.forward = self.hub.remote_wants = None
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
                await self.mqtt.publish(self.topic, self._batch([]), qos=0)
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

    async def _presence(self) -> None:
        """Tell the others whether streams are open here: they send their events only while some are."""
        was_listening = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRESENCE_EVERY_S):
                    await self.hub.subscribers_changed.wait()
            self.hub.subscribers_changed.clear()
            listening = self.hub.subscriber_count > 0
            # While streams are open, every PRESENCE_EVERY_S and at each change; then one last "none".
            if (listening or was_listening) and self.mqtt.is_connected:
                with contextlib.suppress(MqttError):
                    await self.mqtt.publish(self.topic, self._batch([]), qos=0)
            was_listening = listening
            self.metrics.fanout_peers_listening = self.peers_listening()

    def _batch(self, messages: list[bytes]) -> bytes:
        head: dict[str, Any] = {
            "v": FANOUT_VERSION,
            "instance": self.instance,
            "listeners": self.hub.subscriber_count,
        }
        sites = self.hub.event_sites()
        if sites is not None:
            head["sites"] = sorted(sites)[:MAX_SITES]
        return pydantic_core.to_json(head)[:-1] + b',"messages":[' + b",".join(messages) + b"]}"

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
        size = 0
        while self._pending and (not parts or size + len(self._pending[0]) < CHUNK_BYTES):
            part = self._pending.popleft()
            parts.append(part)
            size += len(part) + 1
        return self._batch(parts)

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
            if batch.listeners:
                self._peers[batch.instance] = (time.monotonic() + PRESENCE_TTL_S, batch.presence())
            else:
                self._peers.pop(batch.instance, None)
            self.metrics.fanout_peers_listening = self.peers_listening()
            if not batch.messages:
                continue
            self.metrics.fanout_received += 1
            for item in batch.messages:
                self.hub.publish(item.kind, item.data, forwarded=True)


__all__ = ["Fanout", "FanoutBatch", "FanoutMessage"]
