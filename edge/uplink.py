"""Drains the buffer to the cloud: batches over MQTT QoS 1, deleted only on the cloud's durable ack.

A batch is in flight from publish until its ``BatchAck`` arrives (the cloud sends it only after
committing). With no ack within ``resend_timeout_s`` — the broker dropped it, the cloud restarted, the
link blinked — its events go back to the buffer and leave again in a new batch; the cloud de-duplicates
by event id. Several batches may be in flight at once (``window``) so a long backlog drains at the
link's speed rather than one round trip per batch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pydantic_core
import structlog

from protocol import BatchAck, Topics, new_id
from protocol.models import PROTOCOL_VERSION, utcnow
from steward.mqtt import MqttClient, MqttError

if TYPE_CHECKING:
    from edge.buffer import EventBuffer
    from steward.config import BufferConfig

log = structlog.get_logger("steward.uplink")

# A batch's JSON around its events (version, ids, time, brackets), at most.
_HEAD_BYTES = 512


@dataclass(slots=True)
class _Outgoing:
    """One ``EventBatch`` ready to publish: its id, the buffer seqs it carries, and its bytes."""

    batch_id: str
    seqs: list[int]
    payload: bytes


@dataclass(slots=True)
class _InFlight:
    seqs: list[int]
    sent: float


@dataclass(slots=True)
class UplinkStats:
    batches_sent: int = 0
    events_sent: int = 0
    acks: int = 0
    resends: int = 0
    publish_errors: int = 0
    last_ack_at: float | None = None
    ack_latency_ms: list[float] = field(default_factory=list)


class Uplink:
    def __init__(
        self,
        buffer: EventBuffer,
        client: MqttClient,
        topics: Topics,
        config: BufferConfig,
        *,
        window: int = 8,
    ) -> None:
        self.buffer = buffer
        self.client = client
        self.topics = topics
        self.config = config
        self.window = window
        self._inflight: dict[str, _InFlight] = {}
        self._slots = asyncio.Semaphore(window)
        self._sending: set[asyncio.Task[None]] = set()
        self._backlog = False  # the last take was a full batch: more are likely waiting
        self.stats = UplinkStats()
        self.log = log.bind(site=topics.site_id, gateway=topics.gateway_id)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Send loop; runs until cancelled. Pair it with :meth:`run_resender` in the same TaskGroup."""
        try:
            while True:
                await self._slots.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    self._slots.release()
                    raise
                # Publish in a task: the next batch is read from the buffer while this one waits for
                # its PUBACK. Tasks start in creation order, so batches reach the broker in seq order.
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        finally:
            for task in list(self._sending):
                task.cancel()

    async def _next_batch(self) -> _Outgoing:
        while True:
            if not self.client.is_connected:
                await self.client.wait_connected(timeout=None)
            waiting = await self.buffer.wait_for_events(timeout=0)
            if not waiting and not await self.buffer.wait_for_events(timeout=1.0):
                continue
            # Linger briefly so a burst leaves as one batch instead of many tiny ones; but not while a
            # backlog drains (events were waiting and the last take filled a batch): a pause per batch
            # would cap the drain at batch_size / linger (10,000 events/s by default).
            if self.config.linger_ms and not (waiting and self._backlog):
                await asyncio.sleep(self.config.linger_ms / 1000)
            seqs, events_json = await self.buffer.take_json(
                self.config.batch_size, self.config.max_batch_bytes - _HEAD_BYTES
            )
            self._backlog = len(seqs) >= self.config.batch_size
            if seqs:
                batch_id = new_id()
                # The EventBatch's JSON around the events the buffer serialised (no model per event);
                # the header goes through pydantic-core so its values are escaped and formatted like
                # EventBatch.to_bytes() does.
                head = pydantic_core.to_json(
                    {
                        "v": PROTOCOL_VERSION,
                        "batch_id": batch_id,
                        "site_id": self.topics.site_id,
                        "gateway_id": self.topics.gateway_id,
                        "sent_at": utcnow(),
                    }
                )
                return _Outgoing(batch_id, seqs, head[:-1] + b',"events":[' + events_json + b"]}")

    async def _send(self, batch: _Outgoing) -> None:
        seqs = batch.seqs
        self._inflight[batch.batch_id] = _InFlight(seqs, time.monotonic())
        try:
            await self.client.publish(
                self.topics.events, batch.payload, qos=1, timeout=self.config.resend_timeout_s
            )
        except MqttError as exc:
            self.stats.publish_errors += 1
            self.log.warning("uplink.publish_failed", batch=batch.batch_id, events=len(seqs), error=str(exc))
            self._give_back(batch.batch_id)
            return
        except Exception:
            # Nobody awaits this task: say what happened and let the events go again.
            self.log.exception("uplink.send_failed", batch=batch.batch_id, events=len(seqs))
            self._give_back(batch.batch_id)
            return
        self.stats.batches_sent += 1
        self.stats.events_sent += len(seqs)

    def _give_back(self, batch_id: str) -> None:
        flight = self._inflight.pop(batch_id, None)
        if flight is not None:
            self.buffer.release(flight.seqs)
            self._slots.release()

    async def handle_ack(self, ack: BatchAck) -> None:
        flight = self._inflight.pop(ack.batch_id, None)
        if flight is None:
            return  # a late ack for a batch we already resent: the resend will be acked too
        if ack.error:
            # The cloud could not commit: keep the events and let them go again.
            self.log.warning("uplink.cloud_error", batch=ack.batch_id, error=ack.error)
            self.buffer.release(flight.seqs)
        else:
            if ack.rejected:
                # Kept by the cloud as received (rejected_events) with the reason; resending cannot help.
                self.log.error("uplink.events_rejected", batch=ack.batch_id, rejected=ack.rejected)
            # Committed by the cloud, so the events may go. The DELETE runs behind this call (acks
            # arriving meanwhile share one transaction); until it is done they stay in flight, so
            # nothing is taken twice, and if it fails they are released and sent again.
            self.buffer.ack_soon(flight.seqs)
            self.stats.acks += 1
            self.stats.last_ack_at = time.time()
            lat = (time.monotonic() - flight.sent) * 1000
            self.stats.ack_latency_ms = [*self.stats.ack_latency_ms[-99:], lat]
        self._slots.release()

    async def run_resender(self, interval: float = 0.5) -> None:
        """Requeue batches whose ack is overdue or that were in flight when the link dropped."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            overdue = [b for b, f in self._inflight.items() if now - f.sent > self.config.resend_timeout_s]
            if not self.client.is_connected:
                overdue = list(self._inflight)
            for batch_id in overdue:
                self.stats.resends += 1
                self._give_back(batch_id)
            if overdue:
                self.log.info("uplink.resend", batches=len(overdue), connected=self.client.is_connected)
