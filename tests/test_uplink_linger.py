"""The uplink's linger gathers a burst of live events into one batch, but never paces a backlog: with a
pause before every take, a drain could go no faster than batch_size / linger (10,000 events/s with the
defaults), however fast the link and the cloud."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from edge.buffer import EventBuffer, EventDraft
from edge.uplink import Uplink
from protocol import EventBatch, Topics
from steward.broker import EmbeddedBroker
from steward.config import BufferConfig
from steward.mqtt import MqttClient

LINGER_S = 1.0
BATCH = 50


def drafts(n: int) -> list[EventDraft]:
    now = datetime.now(UTC)
    return [EventDraft("meter-1", "meter.reading", now, {"kwh": float(i)}, None) for i in range(n)]


async def test_a_backlog_drains_without_lingering_and_a_live_burst_still_lingers(tmp_path: Path) -> None:
    config = BufferConfig(path=tmp_path / "edge.db", batch_size=BATCH, linger_ms=int(LINGER_S * 1000))
    topics = Topics("steward", "estate-a", "gw-1")
    async with (
        EmbeddedBroker(port=0) as broker,
        await EventBuffer.open(config) as buffer,
        MqttClient("127.0.0.1", broker.port, client_id="cloud") as cloud,
        MqttClient("127.0.0.1", broker.port, client_id="gw-1") as gateway,
    ):
        await cloud.subscribe(topics.events, qos=1)
        await buffer.record_many(drafts(4 * BATCH))  # the backlog an outage left: four full batches
        uplink = Uplink(buffer, gateway, topics, config)
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(uplink.run())
            started = time.monotonic()
            sizes = []
            for _ in range(4):
                msg = await cloud.get_message(timeout=5)
                sizes.append(len(EventBatch.model_validate_json(msg.payload).events))
            backlog_s = time.monotonic() - started
            # The first take lingers (nothing was sent yet); each full batch after it goes at once.
            assert sizes == [BATCH] * 4
            assert backlog_s < LINGER_S * 2, f"the backlog waited a linger per batch: {backlog_s:.2f} s"

            # Caught up (the fifth take finds nothing): live events wait for the linger, and leave
            # together.
            await asyncio.sleep(0.1)
            recorded = time.monotonic()
            for draft in drafts(3):
                await buffer.record(draft)
                await asyncio.sleep(0.05)
            msg = await cloud.get_message(timeout=5)
            assert len(EventBatch.model_validate_json(msg.payload).events) == 3
            assert time.monotonic() - recorded >= LINGER_S * 0.9
            sender.cancel()
