"""The embedded broker stops within a bound even when amqtt's own shutdown never returns: it awaits
each session handler's reader task, and one cancelled before it had started never signals that it
stopped (a store-and-forward test hung for its whole 180 s when the gateway reconnected just as the
broker stopped). The port must be free again and no connection left open."""

from __future__ import annotations

import asyncio
import time

import pytest

from steward import broker as broker_mod
from steward.broker import EmbeddedBroker

pytestmark = pytest.mark.timeout(60)


async def test_a_stuck_amqtt_shutdown_still_frees_the_port_and_drops_the_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker_mod, "SHUTDOWN_TIMEOUT_S", 0.5)
    broker = EmbeddedBroker(port=0)
    await broker.start()
    # A connection amqtt has accepted (no CONNECT yet): the broker must drop it as it goes.
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    await asyncio.sleep(0.1)

    async def never(*_args: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(broker_mod._TrackedBroker, "_cleanup_session", never)
    monkeypatch.setattr(broker_mod._TrackedBroker, "_shutdown_broadcast_loop", never)
    started = time.monotonic()
    await asyncio.wait_for(broker.stop(), 10)
    assert time.monotonic() - started < 3
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass  # aborted: as good
    writer.close()
    monkeypatch.undo()
    again = EmbeddedBroker(port=broker.port)  # the port is free: a restarted broker binds it
    await again.start()
    await again.stop()
