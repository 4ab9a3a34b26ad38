"""Security tests: signed commands, broker accounts and ACLs, TLS, refusals at the gateway.

Shared helpers live here. Proving that something did *not* arrive uses a sentinel: after the
forbidden message, a permitted one follows on the same connection; brokers keep one connection's
messages in order, so once the sentinel is in, the forbidden message would have been too.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from steward.mosquitto import mosquitto_binary
from steward.mqtt import Message, MqttClient

MOSQUITTO = mosquitto_binary()
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto binary not found (apt install mosquitto) -- Mosquitto tests skipped"
)

SUBACK_FAILURE = 0x80


async def until_topic(client: MqttClient, topic: str, timeout: float = 5.0) -> list[Message]:
    """Every message ``client`` receives up to and including the first one on ``topic``."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await client.get_message()
            got.append(msg)
            if msg.topic == topic:
                return got


def _suback_sync(
    *,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    filters: list[str],
    client_id: str,
    tls_context: ssl.SSLContext | None,
    timeout: float,
) -> list[int]:
    connected, subacked = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client: paho.Client, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result["connack"] = rc
        connected.set()

    def on_subscribe(client: paho.Client, ud: Any, mid: int, rcs: Any, props: Any = None) -> None:
        result["codes"] = [int(getattr(rc, "value", rc)) for rc in rcs]
        subacked.set()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if username is not None:
        c.username_pw_set(username, password)
    if tls_context is not None:
        c.tls_set_context(tls_context)
    c.on_connect, c.on_subscribe = on_connect, on_subscribe
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        if not connected.wait(timeout) or result["connack"].is_failure:
            raise AssertionError(f"could not connect as {username!r}: {result.get('connack')}")
        c.subscribe([(f, 1) for f in filters])
        if not subacked.wait(timeout):
            raise AssertionError(f"no SUBACK within {timeout}s")
        codes: list[int] = result["codes"]
        return codes
    finally:
        c.disconnect()
        c.loop_stop()


async def suback_codes(
    host: str,
    port: int,
    *,
    username: str | None,
    password: str | None,
    filters: list[str],
    client_id: str,
    tls_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> list[int]:
    """The broker's SUBACK return codes for ``filters`` (0-2 granted QoS, 0x80 refused).

    Uses paho directly because :meth:`steward.mqtt.MqttClient.subscribe` does not report them.
    """
    return await asyncio.to_thread(
        functools.partial(
            _suback_sync,
            host=host,
            port=port,
            username=username,
            password=password,
            filters=filters,
            client_id=client_id,
            tls_context=tls_context,
            timeout=timeout,
        )
    )
