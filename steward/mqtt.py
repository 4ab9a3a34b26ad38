"""An asyncio face on paho-mqtt, shared by the gateway uplink, the cloud ingest, MQTT devices and simulators.

paho runs its network loop in its own thread; every callback is handed to the event loop with
``call_soon_threadsafe``. Each QoS 1 publish gets a future keyed by message id that resolves on
PUBACK and is removed in ``finally`` (aiomqtt v2's pattern). Incoming messages go through one bounded
queue; when it is full the oldest message is dropped and counted, so a flood from one device cannot
exhaust memory. ``TCP_NODELAY`` is set on the socket: without it a QoS 1 round trip waits on Nagle.

Errors::

    MqttError
     ├── MqttConnectError   the broker refused us or could not be reached in time
     └── MqttPublishError   no PUBACK in time, or the link dropped with the message in flight
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion

log = structlog.get_logger("steward.mqtt")


class MqttError(Exception):
    """Base of MQTT failures."""


class MqttConnectError(MqttError):
    pass


class MqttPublishError(MqttError):
    pass


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(slots=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(slots=True)
class _State:
    pending: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    subacks: dict[int, asyncio.Future[None]] = field(default_factory=dict)


class MqttClient:
    """One MQTT connection. Use as ``async with MqttClient(...) as c:``.

    Subscriptions are remembered and renewed after every reconnect, which paho performs on its own
    with backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        clean_session: bool = True,
        queue_size: int = 10_000,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        max_inflight: int = 1000,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client_id = client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls.context())
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(max(1, int(reconnect_min_s)), max(1, int(reconnect_max_s)))
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._state = _State()
        self._subscriptions: dict[str, int] = {}
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self._lanes: dict[str, asyncio.Queue[Message]] = {}
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._connect_rc: paho.ReasonCode | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.reconnects = 0
        self._closing = False
        self._refused = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    def start(self) -> None:
        """Begin connecting in the background and keep reconnecting; do not wait for the broker.

        The gateway uses this: it must run its building with the uplink down.
        """
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._connect_rc = None
        try:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise MqttConnectError(f"cannot reach MQTT broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait until the broker has accepted us (MqttConnectError otherwise)."""
        self._refused.clear()
        self.start()
        try:
            # Whichever comes first: accepted, refused (bad credentials: no point waiting), or the timeout.
            async with asyncio.timeout(timeout):
                connected = asyncio.ensure_future(self._connected.wait())
                refused = asyncio.ensure_future(self._refused.wait())
                try:
                    await asyncio.wait({connected, refused}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    connected.cancel()
                    refused.cancel()
            if not self._connected.is_set():
                rc = self._connect_rc
                await self.disconnect()
                raise MqttConnectError(f"MQTT broker {self.host}:{self.port} refused the connection: {rc}")
        except TimeoutError:
            rc = self._connect_rc
            await self.disconnect()
            why = f"broker refused: {rc}" if rc is not None else "no answer"
            raise MqttConnectError(f"MQTT broker {self.host}:{self.port}: {why} within {timeout}s") from None

    async def disconnect(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self._client.disconnect()
        # loop_stop joins paho's thread; keep the event loop free while it does.
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()
        self._disconnected.set()
        self._fail_pending(MqttPublishError("client closed"))

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    # ---- operations ------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish; for QoS >= 1 return only once the broker has acknowledged it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        # The lock makes "publish and register the future" atomic against paho's thread calling
        # on_publish before we have stored the future.
        with self._lock:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                raise MqttPublishError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
            if qos == 0:
                return
            if info.rc == paho.MQTT_ERR_NO_CONN:
                raise MqttPublishError(f"publish to {topic}: not connected to the broker")
            if info.is_published():
                return
            self._state.pending[info.mid] = fut
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the result.
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise MqttPublishError(f"no PUBACK for {topic} within {timeout}s") from None
        finally:
            self._state.pending.pop(info.mid, None)

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK; MqttError if the broker refuses (e.g. its ACL)."""
        self._subscriptions[topic_filter] = qos
        if not self.is_connected:
            return  # renewed by _on_connect
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            rc, mid = self._client.subscribe(topic_filter, qos)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                raise MqttError(f"subscribe {topic_filter}: {paho.error_string(rc)}")
            self._state.subacks[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise MqttError(f"no SUBACK for {topic_filter} within {timeout}s") from None
        except MqttError:
            self._subscriptions.pop(topic_filter, None)  # refused: do not ask again on every reconnect
            raise
        finally:
            self._state.subacks.pop(mid, None)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        self._client.unsubscribe(topic_filter)

    def add_lane(self, topic_suffix: str, queue_size: int = 1000) -> None:
        """Deliver messages whose topic ends with ``topic_suffix`` to a queue of their own, read with
        ``messages(topic_suffix)``: a consumer busy with a flood of other messages (a backlog drain)
        then cannot hold them up. Add lanes before subscribing."""
        self._lanes.setdefault(topic_suffix, asyncio.Queue(maxsize=queue_size))

    async def messages(self, lane: str | None = None) -> AsyncIterator[Message]:
        queue = self._queue if lane is None else self._lanes[lane]
        while True:
            yield await queue.get()

    async def get_message(self, timeout: float | None = None) -> Message:
        return await asyncio.wait_for(self._queue.get(), timeout)

    # ---- paho callbacks (paho's thread) ----------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._connect_rc = rc
            log.warning("mqtt.connect_refused", broker=f"{self.host}:{self.port}", reason=str(rc))
            self._call(self._refused.set)
            return
        for topic, qos in list(self._subscriptions.items()):
            client.subscribe(topic, qos)
        self._call(self._set_connected)

    def _set_connected(self) -> None:
        if not self._connected.is_set() and self.reconnects:
            log.info("mqtt.reconnected", broker=f"{self.host}:{self.port}", client=self.client_id)
        self._connected.set()
        self._disconnected.clear()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self._call(self._set_disconnected, str(rc))

    def _set_disconnected(self, reason: str) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._disconnected.set()
        if was and not self._closing:
            self.reconnects += 1
            log.warning(
                "mqtt.disconnected", broker=f"{self.host}:{self.port}", client=self.client_id, reason=reason
            )
        # In-flight QoS 1 publishes may never be acknowledged now; callers resend from their own store.
        self._fail_pending(MqttPublishError(f"connection lost: {reason}"))

    def _fail_pending(self, exc: Exception) -> None:
        for fut in list(self._state.pending.values()) + list(self._state.subacks.values()):
            if not fut.done():
                fut.set_exception(exc)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: Any = None, props: Any = None
    ) -> None:
        self._call(self._resolve, self._state.pending, mid)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        refused = [str(rc) for rc in rcs if getattr(rc, "is_failure", False)]
        if refused:
            self._call(self._reject, self._state.subacks, mid, MqttError(f"subscription refused: {refused}"))
        else:
            self._call(self._resolve, self._state.subacks, mid)

    def _reject(self, table: dict[int, asyncio.Future[None]], mid: int, exc: Exception) -> None:
        fut = table.get(mid)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _resolve(self, table: dict[int, asyncio.Future[None]], mid: int) -> None:
        # on_publish may arrive before publish() stored the future only if the lock was not held;
        # it is, so a missing entry means the caller already gave up.
        fut = table.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._call(self._enqueue, Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _enqueue(self, message: Message) -> None:
        queue = self._queue
        for suffix, lane in self._lanes.items():
            if message.topic.endswith(suffix):
                queue = lane
                break
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("mqtt.queue_full_dropped_oldest", client=self.client_id, dropped=self.dropped)
        queue.put_nowait(message)
