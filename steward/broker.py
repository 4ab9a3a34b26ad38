"""The embedded MQTT broker (amqtt) used by `make demo` and the tests: no Mosquitto needed.

amqtt speaks MQTT 3.1.1 only, which is why the wire protocol uses nothing newer. Production
sites use Mosquitto; see docs/security.md for its configuration.

By default it lets anyone in (the demo). Given ``accounts`` (:class:`steward.broker_auth.BrokerAccounts`)
it refuses anonymous clients, binds each account to its client ids and enforces the same per-gateway
topic rules as the Mosquitto files generated from the same accounts. amqtt 0.12 drops (clean session)
or takes over (persistent session) an existing session for a client id as soon as a CONNECT with that
id arrives, *before* it authenticates the newcomer; with accounts we authenticate first
(:class:`_AuthenticateFirstBroker`), so a refused CONNECT cannot touch another client's session. It is
still not meant to face the internet (see docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import structlog
from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import format_client_message, gen_client_id

from steward.broker_auth import BrokerAccounts, amqtt_plugins
from steward.net import free_port

log = structlog.get_logger("steward.broker")


# How long amqtt's own shutdown may take before the connections it left open are aborted.
SHUTDOWN_TIMEOUT_S = 5.0


class _TrackedBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker, knowing its open connections, so that :meth:`EmbeddedBroker.stop` can end them
    when amqtt's own shutdown does not: it awaits each session handler's reader task, and one
    cancelled before it had started never signals that it stopped (a store-and-forward test hung for
    its whole 180 s when the gateway reconnected just as the broker stopped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[asyncio.StreamWriter] = set()

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        self.connections.add(writer)
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            self.connections.discard(writer)

    def force_close(self) -> None:
        """Stop listening and drop every connection, whatever state amqtt's shutdown is in."""
        for server in self._servers.values():  # amqtt's listeners (pinned amqtt<0.13)
            if server.instance is not None:
                server.instance.close()
        for writer in list(self.connections):
            writer.transport.abort()


class _AuthenticateFirstBroker(_TrackedBroker):
    """amqtt's broker, but a CONNECT is authenticated (password *and* client id, by the auth plugins)
    before the broker looks at any existing session with that client id.

    ``_initialize_client_session`` is amqtt 0.12.1's own, with the authentication step moved in front
    of the session handling (pinned ``amqtt<0.13``; ``tests/security/test_broker_acl.py`` fails if a
    refused CONNECT can drop or take over another client's session again)."""

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        peer = format_client_message(address=remote_address, port=remote_port)
        try:
            handler, client_session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except AMQTTError as exc:
            self.logger.warning(f"[MQTT-3.1.0-1] {peer}: Can't read first packet as CONNECT: {exc}")
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            self.logger.warning(f"Invalid connection from {peer}")
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            self.logger.error(f"No data from {peer} : {exc}")
            raise AMQTTError(exc) from exc

        # The change: refuse before the sessions are touched, with the same CONNACK amqtt would send.
        if not await self._authenticate(client_session, None):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"{peer}: client {client_session.client_id!r} not authorised")

        if client_session.clean_session:
            if client_session.client_id is not None and client_session.client_id != "":
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0

        timeout_disconnect_delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(timeout_disconnect_delay, int):
            client_session.keep_alive += timeout_disconnect_delay
        return handler, client_session


class EmbeddedBroker:
    """``async with EmbeddedBroker(port=0) as b:`` then connect to ``b.host``/``b.port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        plugins: dict[str, Any] | None = None,
        *,
        accounts: BrokerAccounts | None = None,
    ) -> None:
        if plugins is not None and accounts is not None:
            raise ValueError("give either plugins or accounts, not both")
        self.host = host
        self.port = port or free_port(host)
        self.accounts = accounts
        if accounts is not None:
            plugins = amqtt_plugins(accounts)
        self._plugins = plugins or {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        }
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": self._plugins,
        }
        self._broker = _TrackedBroker(config) if self.accounts is None else _AuthenticateFirstBroker(config)
        await self._broker.start()

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        shutdown = asyncio.ensure_future(broker.shutdown())
        done, _ = await asyncio.wait({shutdown}, timeout=SHUTDOWN_TIMEOUT_S)
        if done:
            shutdown.result()
            return
        # Its port must be free again (a restarted broker binds it) and no client may stay connected
        # to a broker that is gone.
        log.warning("broker.shutdown_stalled", port=self.port, open_connections=len(broker.connections))
        shutdown.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await shutdown
        broker.force_close()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
