"""Simulators for push devices: MQTT intercoms and door controllers on a real broker, BLE sensors on fake air.

:func:`create_push_simulator` picks the simulator for a device config; :class:`MqttDeviceSimulator` is
the common part of the MQTT ones: its own client connection to the broker, the ``{base}/cmd`` ->
``{base}/reply`` loop with correlation ids (see ``drivers.door_access`` for the protocol), and
scripted faults (``refuse`` an action with an error, or go ``silent`` and never reply).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlparse

import structlog

from simulators.base import Simulator
from steward.config import DeviceConfig, MqttTransport, SiteConfig
from steward.mqtt import Message, MqttClient

__all__ = [
    "MqttDeviceSimulator",
    "broker_address",
    "create_push_simulator",
]

log = structlog.get_logger("steward.sim")


class MqttDeviceSimulator(Simulator):
    """Base for MQTT device simulators. Subclasses implement :meth:`on_command` and may override
    :meth:`next_deadline` / :meth:`on_deadline` for timed behaviour (relay pulses)."""

    def __init__(self, device: DeviceConfig, broker_host: str = "127.0.0.1", broker_port: int = 1883) -> None:
        if not isinstance(device.transport, MqttTransport):
            raise ValueError(f"{device.id}: {type(self).__name__} needs an mqtt transport")
        self.device = device
        base = device.transport.topic_base
        self.event_topic, self.cmd_topic, self.reply_topic = f"{base}/event", f"{base}/cmd", f"{base}/reply"
        self.client = MqttClient(broker_host, broker_port, client_id=f"sim-{device.id}")
        self.refuse: dict[str, str] = {}  # action -> error the device answers with
        self.silent = False  # True: take commands but never reply (a hung device)
        self.commands: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        await self.client.connect()
        await self.client.subscribe(self.cmd_topic, qos=1)
        self._task = asyncio.create_task(self._serve(), name=f"sim-{self.device.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Python 3.11's wait_for (inside MqttClient.publish) can swallow a cancel that lands as the
        # PUBACK arrives, so the loop also checks a flag; and we never wait for it forever.
        self._stopping = True
        self._wake.set()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        if not task.done():
            log.error("sim.stop_timeout", device=self.device.id)
        await self.client.disconnect()

    # ---- behaviour -------------------------------------------------------------------------
    async def publish_event(self, event: dict[str, Any]) -> None:
        await self.client.publish(self.event_topic, json.dumps(event).encode(), qos=1)

    async def publish_raw(self, payload: bytes, topic: str | None = None) -> None:
        """Send arbitrary bytes as an event (malformed JSON, oversized payloads...)."""
        await self.client.publish(topic or self.event_topic, payload, qos=1)

    def next_deadline(self) -> float | None:
        """Event-loop time of the next timed change, or None."""
        return None

    async def on_deadline(self, now: float) -> None:
        """Perform timed changes that are due."""

    def reschedule(self) -> None:
        """Call after changing what :meth:`next_deadline` returns from outside the serve loop."""
        self._wake.set()

    async def on_command(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Do the action; return the state for the reply, or raise ValueError to refuse it."""
        raise ValueError(f"unknown action {action!r}")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            message: Message | None = None
            self._wake.clear()
            wake = asyncio.ensure_future(self._wake.wait())
            get = asyncio.ensure_future(self.client.get_message())
            try:
                deadline = self.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait({wake, get}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (wake, get):
                    if not fut.done():
                        fut.cancel()
                await asyncio.gather(wake, get, return_exceptions=True)
            if get.done() and not get.cancelled() and get.exception() is None:
                message = get.result()  # taken even if it finished while we were cancelling it
            await self.on_deadline(loop.time())
            if message is not None and message.topic == self.cmd_topic:
                await self._command(message.payload)

    async def _command(self, payload: bytes) -> None:
        try:
            cmd = json.loads(payload)
            corr, action, args = str(cmd["id"]), str(cmd["action"]), dict(cmd.get("args") or {})
        except (ValueError, KeyError, TypeError):
            log.warning("sim.bad_command", device=self.device.id, payload=payload[:200])
            return
        self.commands.append({"action": action, "args": args})
        reply: dict[str, Any] = {"id": corr}
        if action in self.refuse:
            reply |= {"ok": False, "error": self.refuse[action]}
        else:
            try:
                reply |= {"ok": True, "state": await self.on_command(action, args)}
            except ValueError as exc:
                reply |= {"ok": False, "error": str(exc)}
        if not self.silent:
            await self.client.publish(self.reply_topic, json.dumps(reply).encode(), qos=1)


def broker_address(site: SiteConfig) -> tuple[str, int]:
    """Where MQTT devices talk: the on-site device broker, else the uplink broker."""
    url = urlparse(site.device_broker_url or site.uplink.broker_url)
    return url.hostname or "127.0.0.1", url.port or (8883 if url.scheme == "mqtts" else 1883)


def create_push_simulator(device: DeviceConfig, site: SiteConfig) -> Simulator:
    """The simulator for an MQTT or BLE device; LookupError for kinds/transports without one."""
    transport = device.transport.type
    if transport == "mqtt":
        host, port = broker_address(site)
        if device.kind == "video_intercom":
            from simulators.intercom import IntercomSimulator

            return IntercomSimulator(device, host, port)
        if device.kind == "door_access":
            from simulators.door_access_mqtt import DoorControllerSimulator

            return DoorControllerSimulator(device, host, port)
    elif transport == "ble" and device.kind == "ble_sensor":
        from simulators.ble_sensor import BleSensorSimulator

        return BleSensorSimulator(device)
    raise LookupError(f"no push simulator for {device.kind!r} over {transport}")
