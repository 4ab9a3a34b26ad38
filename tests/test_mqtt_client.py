"""steward.mqtt.MqttClient, paho on the event loop: over the embedded broker and, where installed, a
Mosquitto of the test's own (which the keep-alive test freezes with SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from steward.broker import EmbeddedBroker
from steward.mqtt import MqttClient, MqttConnectError, MqttPublishError, Will
from steward.net import free_port

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="mosquitto binary not found (apt install mosquitto)"
)


def _paho_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]


async def _no_message(client: MqttClient, within: float) -> None:
    with contextlib.suppress(TimeoutError):
        msg = await client.get_message(timeout=within)
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")


async def test_many_publishes_in_flight_arrive_once_each_in_order_and_no_paho_thread_runs() -> None:
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient(port=broker.port, client_id="order-a") as a,
        MqttClient(port=broker.port, client_id="order-b") as b,
    ):
        await b.subscribe("order/#")
        # All PUBACKs awaited together: 500 futures keyed by message id, resolved by reads on this loop.
        await asyncio.gather(*(a.publish("order/x", str(i).encode()) for i in range(500)))
        got = [int((await b.get_message(timeout=5)).payload) for _ in range(500)]
        assert got == list(range(500))
        await _no_message(b, 0.2)
        assert _paho_threads() == [], "paho's own network thread must not run: the loop drives the socket"


async def test_messages_larger_than_the_socket_buffers_go_both_ways_whole() -> None:
    # Several hundred KiB at once fill the kernel's buffers: the rest is written when the socket is
    # writable again (add_writer) and read across several callbacks.
    payloads = [os.urandom(400 * 1024) for _ in range(3)]
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient(port=broker.port, client_id="big-a") as a,
        MqttClient(port=broker.port, client_id="big-b") as b,
    ):
        await b.subscribe("big/in")
        await a.subscribe("big/out")
        await asyncio.gather(*(a.publish("big/in", p) for p in payloads))
        echoed = []
        for _ in payloads:
            msg = await b.get_message(timeout=10)
            echoed.append(msg.payload)
            await b.publish("big/out", msg.payload)
        back = [(await a.get_message(timeout=10)).payload for _ in payloads]
        assert echoed == payloads and back == payloads


async def test_after_a_broker_restart_it_reconnects_and_renews_its_subscriptions() -> None:
    port = free_port()
    a = MqttClient(port=port, client_id="restart-a", reconnect_min_s=0.1, reconnect_max_s=0.5)
    b = MqttClient(port=port, client_id="restart-b", reconnect_min_s=0.1, reconnect_max_s=0.5)
    try:
        async with EmbeddedBroker(port=port):
            await a.connect()
            await b.connect()
            await b.subscribe("restart/#")
        async with asyncio.timeout(10):
            await a.wait_disconnected()
            await b.wait_disconnected()
        # Refused while down, and not kept for later either: b must never see it.
        with pytest.raises(MqttPublishError, match="not connected"):
            await a.publish("restart/x", b"while down", timeout=1)
        await asyncio.sleep(0.5)  # several refused attempts: the backoff must not give up
        # A new broker with clean sessions knows nothing of b's subscription unless b renews it.
        async with EmbeddedBroker(port=port):
            await a.wait_connected(timeout=10)
            await b.wait_connected(timeout=10)
            # b's SUBSCRIBE went out on its own connection; a's publish may reach the broker first.
            for _ in range(50):
                await a.publish("restart/x", b"after")
                with contextlib.suppress(TimeoutError):
                    msg = await b.get_message(timeout=0.1)
                    break
            else:
                raise AssertionError("b's subscription was not renewed after the reconnect")
            assert (msg.topic, msg.payload) == ("restart/x", b"after")
            assert a.reconnects == 1 and b.reconnects == 1
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_an_unreachable_broker_is_a_clear_error_and_leaves_nothing_running() -> None:
    port = free_port()  # nothing listens there
    client = MqttClient(port=port, client_id="nobody")
    before = asyncio.all_tasks()
    with pytest.raises(MqttConnectError, match=rf"127.0.0.1:{port}: no answer within 0.5s"):
        await client.connect(timeout=0.5)
    assert asyncio.all_tasks() == before, "the connection task must end with the failed connect"
    assert not client.is_connected
    await client.disconnect()  # again: harmless


async def test_started_before_the_broker_is_up_it_connects_when_the_broker_comes() -> None:
    # The gateway's case: it runs its building with the uplink down and connects whenever it can.
    port = free_port()
    client = MqttClient(port=port, client_id="early", reconnect_min_s=0.1, reconnect_max_s=0.4)
    client.start()
    try:
        await asyncio.sleep(0.6)
        assert not client.is_connected
        async with EmbeddedBroker(port=port):
            await client.wait_connected(timeout=5)
            await client.publish("early/x", b"up")
    finally:
        await client.disconnect()


async def test_disconnect_says_goodbye_so_the_broker_keeps_the_will() -> None:
    will = Will("will/leaver", b"gone", qos=1, retain=False)
    async with (
        EmbeddedBroker(port=0) as broker,
        MqttClient(port=broker.port, client_id="watcher") as watcher,
    ):
        await watcher.subscribe("will/#")
        leaver = MqttClient(port=broker.port, client_id="leaver", will=will)
        await leaver.connect()
        await leaver.disconnect()
        await _no_message(watcher, 0.5)


@contextlib.asynccontextmanager
async def _mosquitto(tmp: Path) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{user}")
    proc = await asyncio.create_subprocess_exec(
        "mosquitto", "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                await asyncio.sleep(0.05)
        yield port, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        await proc.wait()


@needs_mosquitto
async def test_a_broker_that_stops_answering_is_noticed_by_keepalive_and_reconnected(tmp_path: Path) -> None:
    async with _mosquitto(tmp_path) as (port, proc), MqttClient(port=port, client_id="watcher") as watcher:
        await watcher.subscribe("keepalive/#")
        client = MqttClient(port=port, client_id="keepalive", keepalive=1, reconnect_min_s=0.1)
        await client.connect()
        try:
            # Frozen, the broker's kernel still acknowledges TCP: only the missing PINGRESP tells.
            proc.send_signal(signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            # In flight when the link is found dead: its caller is told it failed...
            with pytest.raises(MqttPublishError, match="connection lost"):
                await client.publish("keepalive/x", b"in flight", timeout=10)
            assert not client.is_connected
            assert loop.time() - frozen_at >= 0.9, "no PINGREQ can have gone unanswered yet"
            proc.send_signal(signal.SIGCONT)
            await client.wait_connected(timeout=10)
            await client.publish("keepalive/x", b"back")
            assert client.reconnects == 1
            # ...and this client does not send it again after the reconnect (paho would, marked DUP).
            # The bytes that left before the freeze may still reach the broker once.
            got = []
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append((await watcher.get_message(timeout=1)).payload)
            assert got.count(b"back") == 1 and got.count(b"in flight") <= 1, got
        finally:
            await client.disconnect()
