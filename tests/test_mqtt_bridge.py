"""The asyncio bridge over paho against a real broker: PUBACK waits, resubscribe, bounded queue."""

import asyncio

import pytest

from steward.broker import EmbeddedBroker, free_port
from steward.mqtt import MqttClient, MqttConnectError


async def test_publish_waits_for_puback_and_message_arrives() -> None:
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient(broker.host, broker.port, client_id="sub") as sub,
        MqttClient(broker.host, broker.port, client_id="pub") as pub,
    ):
        await sub.subscribe("t/#", qos=1)
        await pub.publish("t/x", b"hello", qos=1)
        msg = await sub.get_message(timeout=5)
        assert (msg.topic, msg.payload, msg.qos) == ("t/x", b"hello", 1)


async def test_connect_to_nothing_is_a_clear_error() -> None:
    client = MqttClient("127.0.0.1", free_port())
    with pytest.raises(MqttConnectError, match="no answer"):
        await client.connect(timeout=1.5)


async def test_subscriptions_survive_broker_restart() -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port)
    await broker.start()
    sub = MqttClient(broker.host, port, client_id="sub", reconnect_min_s=0.2, reconnect_max_s=1)
    await sub.connect()
    await sub.subscribe("t/#")
    await broker.stop()
    await asyncio.wait_for(sub.wait_disconnected(), 5)
    broker = EmbeddedBroker(port=port)
    await broker.start()
    try:
        await sub.wait_connected(timeout=10)
        async with MqttClient(broker.host, port, client_id="pub") as pub:
            # the renewed SUBSCRIBE races our publish; retry until it lands
            for _ in range(20):
                await pub.publish("t/again", b"1")
                try:
                    msg = await sub.get_message(timeout=0.5)
                    break
                except TimeoutError:
                    continue
            assert msg.topic == "t/again"
        assert sub.reconnects == 1
    finally:
        await sub.disconnect()
        await broker.stop()


async def test_full_queue_drops_oldest_and_counts() -> None:
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient(broker.host, broker.port, queue_size=5) as sub,
        MqttClient(broker.host, broker.port) as pub,
    ):
        await sub.subscribe("flood")
        for i in range(20):
            await pub.publish("flood", str(i).encode())
        await asyncio.sleep(0.3)
        got = [int((await sub.get_message(timeout=1)).payload) for _ in range(5)]
        assert got == [15, 16, 17, 18, 19]
        assert sub.dropped == 15


async def test_a_lane_gets_its_topics_apart_from_a_full_main_queue() -> None:
    """Command results must not wait behind (or be dropped with) a flood of event batches."""
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient("127.0.0.1", broker.port, client_id="lane-sub", queue_size=5) as sub,
        MqttClient("127.0.0.1", broker.port, client_id="lane-pub") as pub,
    ):
        sub.add_lane("/up/results")
        await sub.subscribe("site/#", qos=1)
        for i in range(20):  # four times the main queue: its oldest are dropped
            await pub.publish("site/gw/up/events", str(i).encode(), qos=1)
        await pub.publish("site/gw/up/results", b"r1", qos=1)
        await pub.publish("site/gw/up/results", b"r2", qos=1)
        lane = sub.messages("/up/results")
        got = [await asyncio.wait_for(anext(lane), 5) for _ in range(2)]
        assert [(m.topic, m.payload) for m in got] == [
            ("site/gw/up/results", b"r1"),
            ("site/gw/up/results", b"r2"),
        ]
        events = [await sub.get_message(timeout=5) for _ in range(5)]
        assert [m.payload for m in events] == [b"15", b"16", b"17", b"18", b"19"]
        assert sub.dropped == 15
