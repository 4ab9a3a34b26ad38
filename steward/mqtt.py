"""An asyncio face on paho-mqtt, shared by the gateway uplink, the cloud ingest, MQTT devices and simulators.

paho's protocol engine runs on the event loop itself, as aiomqtt does it: its socket is watched with
``add_reader``/``add_writer``, a publish is written at once, and every callback (a message, a PUBACK) runs
on the loop with nothing to hand over. Only opening a connection (TCP connect and TLS handshake, which
block) runs on a worker thread. paho's own network thread (``loop_start``) cost two thread hand-offs per
message, one each way: a publish woke paho's thread through a socket pair to write it, and a message or
PUBACK came back through ``call_soon_threadsafe``, each a wake-up and a GIL hand-over. A QoS 1
publish-and-echo took 0.80 ms through it and 0.48 ms this way (``bench_command_rtt``, Mosquitto), less
than paho's own threads take (0.53 ms).

Each QoS 1 publish gets a future keyed by message id that resolves on PUBACK and is removed in
``finally`` (aiomqtt v2's pattern). Incoming messages go through one bounded queue; when it is full the
oldest message is dropped and counted, so a flood from one device cannot exhaust memory. ``TCP_NODELAY``
is set on the socket: without it a QoS 1 round trip waits on Nagle. A lost connection is opened again,
after ``reconnect_min_s`` doubling to ``reconnect_max_s``, and subscriptions are renewed.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = structlog.get_logger("steward.mqtt")


class MqttError(Exception):
    """Base of MQTT failures."""


class MqttConnectError(MqttError):
    pass


class MqttPublishError(MqttError):
    """``may_have_sent``: the message had left (no PUBACK in time, or the link dropped with it in
    flight), so the broker may have it and deliver it; False when it was refused before being sent."""

    def __init__(self, message: str, *, may_have_sent: bool = False) -> None:
        super().__init__(message)
        self.may_have_sent = may_have_sent


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

    Subscriptions are remembered and renewed after every reconnect, which the client performs on its
    own with backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
    """

    # How often paho's keep-alive bookkeeping runs (it sends PINGREQ and notices a silent broker).
    MISC_INTERVAL_S = 1.0
    # disconnect() waits this long for a connection attempt on the worker thread to finish (paho's own
    # connect timeout, 5 s, bounds it) and for the DISCONNECT to be written.
    CLOSE_TIMEOUT_S = 10.0

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
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, max(reconnect_min_s, reconnect_max_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
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
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_socket_register_write
        self._client.on_socket_unregister_write = self._on_socket_unregister_write
        self._state = _State()
        self._subscriptions: dict[str, int] = {}
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self._lanes: dict[str, asyncio.Queue[Message]] = {}
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._connect_rc: ReasonCode | None = None
        self.dropped = 0
        self.reconnects = 0
        self._closing = False
        self._refused = asyncio.Event()
        self._stop = asyncio.Event()
        # The socket the loop watches (None between connections) and whether it is watched for writing.
        self._watched: Any = None
        self._writing = False
        self._socket_closed = asyncio.Event()
        self._accepted = False  # the broker accepted the current connection (CONNACK success)
        self._runner: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    def start(self) -> None:
        """Begin connecting in the background and keep reconnecting; do not wait for the broker.

        The gateway uses this: it must run its building with the uplink down. The connection is kept by
        a task of this client's own, which :meth:`disconnect` ends.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self._connect_rc = None
        self._stop.clear()
        try:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise MqttConnectError(f"cannot reach MQTT broker {self.host}:{self.port}: {exc}") from exc
        if self._runner is None or self._runner.done():
            self._runner = self._loop.create_task(self._keep_connected(), name=f"mqtt-{self.client_id}")

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
        """Say goodbye to the broker (so it does not publish our Will), close the socket and end the
        connection task. Safe to call twice, and before :meth:`start`."""
        self._closing = True
        self._stop.set()
        if self._watched is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
                self._flush()  # paho closes the socket once the DISCONNECT is written
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                async with asyncio.timeout(self.CLOSE_TIMEOUT_S):
                    await asyncio.shield(runner)
            except TimeoutError:
                runner.cancel()
                await asyncio.wait({runner})
            except Exception:
                log.exception("mqtt.connection_task_failed", client=self.client_id)
        self._abort()  # a DISCONNECT the socket never took: close it anyway
        self._connected.clear()
        self._disconnected.set()
        self._fail_pending(MqttPublishError("client closed", may_have_sent=True))

    @property
    def _broker(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    async def _keep_connected(self) -> None:
        """Open the connection, serve it until it is lost, wait, open it again, until disconnect()."""
        assert self._loop is not None
        delay = self.reconnect_min_s
        failures = 0
        while not self._closing:
            self._socket_closed.clear()
            self._accepted = False
            try:
                # Blocking (TCP connect, TLS handshake): on a worker thread, bounded by paho's connect
                # timeout. paho's socket callbacks then run on that thread and hand over to the loop.
                await self._loop.run_in_executor(None, self._client.reconnect)
            except (OSError, ValueError) as exc:
                failures += 1
                # Once per outage: a gateway whose uplink is down retries for as long as it is down.
                (log.warning if failures == 1 else log.debug)(
                    "mqtt.connect_failed",
                    broker=f"{self.host}:{self.port}",
                    client=self.client_id,
                    error=str(exc),
                )
            except Exception:
                # Not the network: a bug. Logged in full, and tried again, for the building's sake.
                failures += 1
                log.exception("mqtt.connect_crashed", broker=self._broker, client=self.client_id)
            else:
                if self._closing:
                    self._abort()
                    break
                await self._serve()
                if self._accepted:
                    delay, failures = self.reconnect_min_s, 0
            if self._closing:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, self.reconnect_max_s)

    async def _serve(self) -> None:
        """Until the socket closes: paho's keep-alive bookkeeping every ``MISC_INTERVAL_S`` (reading and
        writing happen in the loop's reader and writer callbacks)."""
        while not self._socket_closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.MISC_INTERVAL_S):
                    await self._socket_closed.wait()
            if self._socket_closed.is_set() or self._client.socket() is None:
                return
            try:
                self._client.loop_misc()
                self._flush()
            except Exception as exc:
                log.exception("mqtt.keepalive_failed", broker=self._broker, client=self.client_id)
                self._abort(f"keep-alive failed: {exc}")
                return

    # ---- the socket on the event loop --------------------------------------------------------
    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the event loop: at once when called there, else handed over (paho calls the
        socket callbacks from the worker thread while a connection opens)."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._call(fn, *args)

    def _watch(self, sock: Any) -> None:
        fd: int = sock.fileno()  # -1 once closed
        if sock is not self._client.socket() or fd < 0:
            return  # closed again before the loop got to it
        assert self._loop is not None
        self._watched, self._writing = sock, False
        self._loop.add_reader(fd, self._readable)
        if self._client.want_write():
            self._want_write(sock)

    def _unwatch(self, sock: Any) -> None:
        # Before paho closes the socket, so the file descriptor is not reused while still watched.
        if sock is not self._watched or self._loop is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._loop.remove_writer(sock.fileno())
        self._watched, self._writing = None, False
        self._socket_closed.set()

    def _want_write(self, sock: Any) -> None:
        if sock is self._watched and not self._writing and self._loop is not None:
            self._writing = True
            self._loop.add_writer(sock.fileno(), self._writable)

    def _written(self, sock: Any) -> None:
        if sock is self._watched and self._writing and self._loop is not None:
            self._writing = False
            self._loop.remove_writer(sock.fileno())

    def _readable(self) -> None:
        client = self._client
        try:
            client.loop_read()
            # An SSL socket can hold decrypted bytes that its file descriptor no longer signals.
            sock = client.socket()
            while isinstance(sock, ssl.SSLSocket) and sock.pending() and sock is self._watched:
                client.loop_read()
                sock = client.socket()
        except Exception as exc:
            # paho handles the socket's own errors (it closes it, and we reconnect); this is anything
            # else (a bug in a callback): drop the connection rather than go on from a half-read packet.
            log.exception("mqtt.read_failed", broker=f"{self.host}:{self.port}", client=self.client_id)
            self._abort(f"read failed: {exc}")

    def _writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            log.exception("mqtt.write_failed", broker=f"{self.host}:{self.port}", client=self.client_id)
            self._abort(f"write failed: {exc}")

    def _flush(self) -> None:
        """Write what paho has queued now, rather than on the loop's next turn (a publish on the
        command path must not wait for one)."""
        if self._watched is not None and self._client.want_write():
            self._writable()

    def _abort(self, reason: str | None = None) -> None:
        """Close the socket without a goodbye (a broken read, a DISCONNECT that could not be written)."""
        sock = self._watched
        if sock is None:
            return
        self._unwatch(sock)
        with contextlib.suppress(OSError):
            sock.close()  # paho still holds it; its next reconnect() closes it again, harmlessly
        if reason is not None:
            self._set_disconnected(reason)

    # ---- operations ------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish; for QoS >= 1 return only once the broker has acknowledged it.

        Not connected (or not yet accepted by the broker): MqttPublishError at once, and the message is
        not kept for later. A caller told that a publish failed can rely on it: paho on its own would
        send it after the next connect, e.g. a command the operator was told had failed."""
        if not self.is_connected:
            if qos == 0:
                return
            raise MqttPublishError(f"publish to {topic}: not connected to the broker")
        # paho calls on_publish only from a read on this loop, so the future is stored before any PUBACK
        # can be handled.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self._forget_outgoing(info.mid)
            raise MqttPublishError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if info.rc == paho.MQTT_ERR_NO_CONN:
            self._forget_outgoing(info.mid)
            if qos == 0:
                return
            raise MqttPublishError(f"publish to {topic}: not connected to the broker")
        self._flush()
        if qos == 0 or info.is_published():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state.pending[info.mid] = fut
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the result.
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise MqttPublishError(f"no PUBACK for {topic} within {timeout}s", may_have_sent=True) from None
        finally:
            self._state.pending.pop(info.mid, None)

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK; MqttError if the broker refuses (e.g. its ACL)."""
        self._subscriptions[topic_filter] = qos
        if not self.is_connected:
            return  # renewed by _on_connect
        rc, mid = self._client.subscribe(topic_filter, qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe {topic_filter}: {paho.error_string(rc)}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state.subacks[mid] = fut
        self._flush()
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
        self._flush()

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

    # ---- paho callbacks (on the loop, except the socket ones while a connection opens) -------
    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._watch, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._want_write, sock)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._written, sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._connect_rc = rc
            log.warning("mqtt.connect_refused", broker=f"{self.host}:{self.port}", reason=str(rc))
            self._refused.set()
            return
        self._accepted = True
        for topic, qos in list(self._subscriptions.items()):
            client.subscribe(topic, qos)
        self._set_connected()

    def _set_connected(self) -> None:
        if not self._connected.is_set() and self.reconnects:
            log.info("mqtt.reconnected", broker=f"{self.host}:{self.port}", client=self.client_id)
        self._connected.set()
        self._disconnected.clear()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self._set_disconnected(str(rc))

    def _set_disconnected(self, reason: str) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._disconnected.set()
        if was and not self._closing:
            self.reconnects += 1
            log.warning(
                "mqtt.disconnected", broker=f"{self.host}:{self.port}", client=self.client_id, reason=reason
            )
        # In-flight QoS 1 publishes may never be acknowledged now; callers resend from their own store
        # (or report the failure), so paho must not send them again after the reconnect.
        self._forget_outgoing()
        self._fail_pending(MqttPublishError(f"connection lost: {reason}", may_have_sent=True))

    def _forget_outgoing(self, mid: int | None = None) -> None:
        """Drop paho's copy of unacknowledged outgoing messages (one, or all): paho keeps each until its
        PUBACK and publishes it again after a reconnect, even with a clean session, though its caller
        has been told it failed. paho has no public call for it; tests/test_mqtt_client.py fails if its
        private state changes shape."""
        client: Any = self._client
        with client._out_message_mutex:
            if mid is None:
                client._out_messages.clear()
                client._inflight_messages = 0
            else:
                client._out_messages.pop(mid, None)

    def _fail_pending(self, exc: Exception) -> None:
        for fut in list(self._state.pending.values()) + list(self._state.subacks.values()):
            if not fut.done():
                fut.set_exception(exc)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: Any = None, props: Any = None
    ) -> None:
        self._resolve(self._state.pending, mid)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        refused = [str(rc) for rc in rcs if getattr(rc, "is_failure", False)]
        if refused:
            self._reject(self._state.subacks, mid, MqttError(f"subscription refused: {refused}"))
        else:
            self._resolve(self._state.subacks, mid)

    def _reject(self, table: dict[int, asyncio.Future[None]], mid: int, exc: Exception) -> None:
        fut = table.get(mid)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _resolve(self, table: dict[int, asyncio.Future[None]], mid: int) -> None:
        # A missing entry means the caller already gave up (timed out or was cancelled).
        fut = table.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._enqueue(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

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
