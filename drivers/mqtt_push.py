"""The shared shape of drivers for devices that speak MQTT themselves (door controllers, intercoms).

The device pushes events to ``{topic_base}/event`` and answers commands; the driver waits for the
next event or its own next deadline (a call going unanswered, a door held open), whichever comes
first, and turns both into readings. Subclasses say what an event means (:meth:`handle`), what is
due at a time (:meth:`due`) and when the next deadline is (:meth:`next_deadline`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from drivers.base import Driver, Reading
from drivers.transports.mqtt import MqttDeviceChannel, PayloadCounter, check_mqtt_config
from steward.config import MqttTransport
from steward.mqtt import Message


class MqttPushDriver(Driver):
    polled: ClassVar[bool] = False
    check_config = staticmethod(check_mqtt_config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad_payloads = PayloadCounter(self.log)
        self._channel: MqttDeviceChannel | None = None

    @property
    def channel(self) -> MqttDeviceChannel:
        if self._channel is None:
            t = self.config.transport
            if not isinstance(t, MqttTransport):
                raise TypeError(f"{self.device_id}: {self.kind} over MQTT needs an mqtt transport")
            self._channel = MqttDeviceChannel(
                self.hub.mqtt, t.topic_base, self.device_id, on_bad=self.bad_payloads
            )
        return self._channel

    async def open(self) -> None:
        await self.channel.open()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def listen(self) -> None:
        await self.open()
        loop = asyncio.get_running_loop()
        while True:
            message: Message | None = None
            try:
                async with asyncio.timeout_at(self.next_deadline()):
                    message = await self.channel.next_event()
            except TimeoutError:
                pass
            readings = self.due(loop.time())
            if message is not None:
                readings += self.handle(message.payload, loop.time())
            for reading in readings:
                await self.emit(reading)

    def next_deadline(self) -> float | None:
        """Event-loop time of the next timed reading, or None to wait for the device alone."""
        return None

    def due(self, now: float) -> list[Reading]:
        """Readings whose time has come (missed calls, doors held open)."""
        return []

    def handle(self, payload: bytes, now: float) -> list[Reading]:
        """Readings for one event from the device."""
        return []
