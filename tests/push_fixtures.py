"""Shared helpers for the push-device tests: an event log to emit into, a running listener, an MQTT hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from drivers.base import Driver, Reading
from drivers.hub import TransportHub
from steward.broker import EmbeddedBroker
from steward.config import DeviceConfig
from steward.mqtt import MqttClient


class EventLog:
    """``driver.emit``: records readings; tests wait for them with a timeout."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._changed = asyncio.Event()

    async def emit(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._changed.set()

    def of(self, event_type: str) -> list[Reading]:
        return [r for r in self.readings if r.type == event_type]

    @property
    def types(self) -> list[str]:
        return [r.type for r in self.readings]

    async def wait_for(self, event_type: str, *, count: int = 1, timeout: float = 5.0) -> Reading:
        """The ``count``-th reading of ``event_type``, waiting up to ``timeout`` seconds for it."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = self.of(event_type)
                    if len(found) >= count:
                        return found[count - 1]
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {count}x {event_type} within {timeout}s; got {self.types}") from None


@contextlib.asynccontextmanager
async def listening(driver: Driver) -> AsyncIterator[Driver]:
    """Run ``driver.listen()`` in a TaskGroup for the block; cancel it and close the driver after."""
    await driver.open()
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.listen(), name=f"listen:{driver.device_id}")
            try:
                yield driver
            finally:
                task.cancel()
    finally:
        await driver.close()


@contextlib.asynccontextmanager
async def mqtt_hub() -> AsyncIterator[tuple[EmbeddedBroker, TransportHub]]:
    """A real broker on a free loopback port and a hub whose device client is connected to it."""
    async with (
        EmbeddedBroker(host="127.0.0.1", port=0) as broker,
        MqttClient(broker.host, broker.port, client_id="gw-devices") as client,
    ):
        yield broker, TransportHub(mqtt=client)


def mqtt_device(device_id: str, kind: str, **options: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": device_id,
            "kind": kind,
            "transport": {"type": "mqtt", "topic_base": f"estate/devices/{device_id}"},
            "options": options,
        }
    )


async def settle(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (state reached through the broker), failing after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - state without an event of its own: poll it
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"condition not reached within {timeout}s") from None
