"""The embedded MQTT broker (amqtt) used by `make demo` and the tests: no Mosquitto needed.

amqtt speaks MQTT 3.1.1 only, which is why the wire protocol uses nothing newer. Production
sites use Mosquitto; see docs/security.md for its configuration.

By default it lets anyone in (the demo). Given ``accounts`` (:class:`steward.broker_auth.BrokerAccounts`)
it refuses anonymous clients and enforces the same per-gateway topic rules as the Mosquitto ACL
file generated from the same accounts. It is still not meant to face the internet: amqtt 0.12
drops an existing session for a client id as soon as a CONNECT with that id arrives, before the
newcomer is authenticated (see docs/security.md).
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

from steward.broker_auth import BrokerAccounts, amqtt_plugins


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
