"""The gateway runtime: wires drivers, buffer, uplink and command handling under one TaskGroup.

Up: driver -> :meth:`Gateway.record` -> buffer (committed) -> uplink -> cloud.
Down: cloud command -> :class:`CommandHandler` -> driver -> result up.
The gateway starts and runs its building with the uplink down; MQTT reconnects in the background.
A service that fails (a bug in the uplink, the status report, a command) is logged and started again;
it never takes fire linkage and door access down with it, as one failed task in a TaskGroup would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import structlog
from pydantic import ValidationError

from drivers.base import Driver, Reading
from drivers.hub import TransportHub
from drivers.registry import create_driver
from edge.access import AccessControl
from edge.buffer import EventBuffer, EventDraft
from edge.commands import CommandHandler, Guard, LocalAction, Verifier
from edge.credentials import CredentialStore, local_db_path
from edge.linkage import FireLinkage
from edge.supervisor import DeviceSupervisor
from edge.uplink import Uplink
from edge.verify import make_verifier
from protocol import BatchAck, CommandResult, DeviceInfo, Event, GatewayStatus, Topics
from protocol.models import utcnow
from steward import __version__
from steward.config import SiteConfig
from steward.mqtt import MqttClient, MqttError, TlsSettings, Will

EventHook = Callable[[Event], Awaitable[None]]
HEALTH_INTERVAL_S = 60.0
# A failed service starts again after this long, doubling while it keeps failing, up to the maximum;
# back to the minimum once it has run for twice the maximum.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0

log = structlog.get_logger("steward.gateway")


def _tls(site: SiteConfig) -> TlsSettings | None:
    up = site.uplink
    if not up.use_tls:
        return None
    t = up.tls
    if t is None:
        return TlsSettings()
    return TlsSettings(
        ca_file=str(t.ca_file) if t.ca_file else None,
        cert_file=str(t.cert_file) if t.cert_file else None,
        key_file=str(t.key_file) if t.key_file else None,
        verify=t.verify,
    )


def uplink_client(site: SiteConfig) -> MqttClient:
    topics = Topics(site.uplink.topic_prefix, site.site_id, site.gateway_id)
    offline = GatewayStatus(site_id=site.site_id, gateway_id=site.gateway_id, online=False, at=utcnow())
    up = site.uplink
    return MqttClient(
        up.host,
        up.port,
        client_id=f"steward-gw-{site.gateway_id}",
        username=up.username,
        password=up.password.get_secret_value() if up.password else None,
        tls=_tls(site),
        will=Will(topics.status, offline.to_bytes(), qos=1, retain=True),
        keepalive=up.keepalive_s,
    )


class Gateway:
    def __init__(
        self,
        site: SiteConfig,
        *,
        ble_scanner: Any = None,
        verify: Verifier | None = None,
        health_interval_s: float = HEALTH_INTERVAL_S,
    ) -> None:
        self.site = site
        self.topics = Topics(site.uplink.topic_prefix, site.site_id, site.gateway_id)
        self.log = log.bind(site=site.site_id, gateway=site.gateway_id)
        self.hooks: list[EventHook] = []
        self.guards: list[Guard] = []
        self.local_actions: dict[str, LocalAction] = {}
        self.linkage: FireLinkage | None = None
        self.access: AccessControl | None = None
        # Without an explicit verifier, commands must carry the cloud's signature when a key is configured.
        self.verify = verify or make_verifier(site.uplink.command_public_key, site_id=site.site_id)
        self.health_interval_s = health_interval_s
        self._ble_scanner = ble_scanner
        self.started = asyncio.Event()
        self.buffer: EventBuffer | None = None
        self.uplink: Uplink | None = None
        self.client: MqttClient | None = None
        self.drivers: dict[str, Driver] = {}
        self.supervisors: dict[str, DeviceSupervisor] = {}
        self.commands: CommandHandler | None = None
        self._started_at = time.time()
        self.malformed_downlink = 0
        self.service_failures: Counter[str] = Counter()  # service name -> times it failed and restarted

    # ---- up ----------------------------------------------------------------------------------
    async def record(self, driver: Driver, reading: Reading) -> Event:
        """Commit one device event to the buffer; it counts as received only once this returns."""
        assert self.buffer is not None
        dev = self.site.device(driver.device_id) if driver.device_id in self.drivers else None
        event = await self.buffer.record(
            EventDraft(
                device_id=driver.device_id,
                type=reading.type,
                ts=reading.ts,
                data=reading.data,
                location=dev.location if dev else None,
            )
        )
        for hook in self.hooks:
            try:
                await hook(event)
            except Exception:
                # A faulty observer must never stop events being recorded.
                self.log.exception("gateway.hook_failed", hook=getattr(hook, "__name__", repr(hook)))
        return event

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled; on the way out publish offline status and close everything."""
        site = self.site
        self.log.info("gateway.starting", devices=len(site.devices), broker=site.uplink.broker_url)
        buffer = await EventBuffer.open(site.buffer)
        self.buffer = buffer
        client = self.client = uplink_client(site)
        device_client = self._device_client()
        if self._ble_scanner is None and any(d.transport.type == "ble" for d in site.devices):
            from drivers.transports.ble import BleScanner

            self._ble_scanner = BleScanner()
        hub = TransportHub(mqtt=device_client, ble=self._ble_scanner)
        try:
            await client.subscribe(self.topics.acks)
            await client.subscribe(self.topics.commands)
            await client.subscribe(self.topics.credentials)
            client.start()
            if device_client is not None:
                device_client.start()
            await self._start_ble()
            for dev in site.devices:
                driver = create_driver(dev, hub, self._emitter(dev.id))
                self.drivers[dev.id] = driver
            # Linkage before access: access must know which doors fire linkage holds open. Either may
            # be given ready-made (tests tune their timings).
            if self.linkage is None:
                self.linkage = FireLinkage(self, site.fire_linkage).attach()
            if self.access is None:
                credentials = await CredentialStore.open(local_db_path(site))
                self.access = AccessControl(
                    self, credentials, site.access, held=self.linkage.holding
                ).attach()
            self.uplink = Uplink(buffer, client, self.topics, site.buffer)
            self.commands = CommandHandler(
                gateway_id=site.gateway_id,
                drivers=self.drivers,
                publish_result=self._publish_result,
                remember=buffer.remember_command,
                verify=self.verify,
                guards=self.guards,
                local_actions=self.local_actions,
            )
            for driver in self.drivers.values():
                await driver.open()
            async with asyncio.TaskGroup() as tg:
                for dev_id, driver in self.drivers.items():
                    sup = self.supervisors[dev_id] = DeviceSupervisor(driver, self.record)
                    tg.create_task(sup.run(), name=f"device:{dev_id}")
                services: dict[str, Callable[[], Awaitable[None]]] = {
                    "uplink": self.uplink.run,
                    "uplink-resend": self.uplink.run_resender,
                    "downlink": lambda: self._downlink(tg),
                    "status": self._status_loop,
                    "fire-linkage": self.linkage.run,
                    "access": self.access.run,
                }
                for name, service in services.items():
                    tg.create_task(self._keep_running(name, service), name=name)
                self.started.set()
                self.log.info("gateway.started")
        finally:
            await self._shutdown(client, device_client, hub, buffer)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a service until it returns; if it fails, log why and start it again."""
        delay = RESTART_MIN_S
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except Exception:
                self.service_failures[name] += 1
                if time.monotonic() - started >= 2 * RESTART_MAX_S:
                    delay = RESTART_MIN_S
                self.log.exception(
                    "gateway.service_failed",
                    service=name,
                    failures=self.service_failures[name],
                    restart_in_s=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def _handle_command(self, payload: bytes) -> None:
        assert self.commands is not None
        try:
            await self.commands.handle(payload)
        except Exception:
            # The handler answers every failure it knows of; this is one it does not (a full disk
            # under the result's record, a bug). The cloud expires the command; the gateway goes on.
            self.service_failures["command"] += 1
            self.log.exception("command.handling_failed", size=len(payload))

    async def _start_ble(self) -> None:
        """Start the one BLE scanner if any device needs it; a missing adapter is an error, not a crash."""
        if not any(d.transport.type == "ble" for d in self.site.devices):
            return
        from drivers.transports.ble import BleError

        try:
            await self._ble_scanner.start()
        except BleError as exc:
            # The rest of the building must keep running; BLE sensors stay silent and show offline.
            self.log.error("ble.unavailable", error=str(exc))

    def _emitter(self, device_id: str) -> Callable[[Reading], Awaitable[None]]:
        async def emit(reading: Reading) -> None:
            await self.record(self.drivers[device_id], reading)

        return emit

    def _device_client(self) -> MqttClient | None:
        if not any(d.transport.type == "mqtt" for d in self.site.devices):
            return None
        up = self.site.uplink
        client_id = f"steward-dev-{self.site.gateway_id}"
        if self.site.device_broker_url is None:
            # Devices share the uplink broker (small sites, the demo): same account, its own client id.
            return MqttClient(
                up.host,
                up.port,
                client_id=client_id,
                username=up.username,
                password=up.password.get_secret_value() if up.password else None,
                tls=_tls(self.site),
            )
        u = urlparse(self.site.device_broker_url)
        return MqttClient(u.hostname or "127.0.0.1", u.port or 1883, client_id=client_id)

    async def _shutdown(
        self, client: MqttClient, device_client: MqttClient | None, hub: TransportHub, buffer: EventBuffer
    ) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                if client.is_connected:
                    await client.publish(
                        self.topics.status, self._status(online=False).to_bytes(), retain=True
                    )
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await driver.close()
        if self._ble_scanner is not None and hasattr(self._ble_scanner, "stop"):
            with contextlib.suppress(Exception):
                await self._ble_scanner.stop()
        with contextlib.suppress(Exception):
            await hub.close()
        await client.disconnect()
        if device_client is not None:
            await device_client.disconnect()
        await buffer.close()
        self.log.info("gateway.stopped")

    # ---- down --------------------------------------------------------------------------------
    async def _downlink(self, tg: asyncio.TaskGroup) -> None:
        assert self.client is not None and self.uplink is not None and self.commands is not None
        async for msg in self.client.messages():
            if msg.topic == self.topics.acks:
                try:
                    ack = BatchAck.model_validate_json(msg.payload)
                except ValidationError:
                    self.malformed_downlink += 1
                    self.log.warning("downlink.malformed_ack", size=len(msg.payload))
                    continue
                await self.uplink.handle_ack(ack)
            elif msg.topic == self.topics.commands:
                if msg.retain:
                    # Commands are never published retained; a retained one is stale or planted.
                    self.malformed_downlink += 1
                    self.log.warning("downlink.retained_command_ignored")
                    continue
                tg.create_task(self._handle_command(msg.payload), name="command")
            elif msg.topic == self.topics.credentials and self.access is not None:
                if msg.retain:
                    self.malformed_downlink += 1
                    self.log.warning("downlink.retained_credentials_ignored")
                    continue
                await self.access.handle_sync(msg.payload)

    async def _publish_result(self, result: CommandResult) -> None:
        assert self.client is not None
        try:
            await self.client.publish(self.topics.results, result.to_bytes(), qos=1, timeout=5)
        except MqttError as exc:
            # The cloud expires the command and shows that; the buffer still keeps the record below.
            self.log.warning("command.result_not_sent", command=result.command_id, error=str(exc))
        if result.status.final and self.buffer is not None:
            await self.buffer.record(
                EventDraft(
                    device_id=result.device_id,
                    type=f"command.{result.status.value}",
                    ts=result.at,
                    data={"command_id": result.command_id, "reason": result.reason, "state": result.state},
                )
            )

    # ---- status ------------------------------------------------------------------------------
    def _status(self, online: bool) -> GatewayStatus:
        return GatewayStatus(
            site_id=self.site.site_id,
            gateway_id=self.site.gateway_id,
            online=online,
            at=utcnow(),
            site_name=self.site.site_name,
            timezone=self.site.timezone,
            software=f"steward {__version__}",
            devices=[
                DeviceInfo(id=d.id, kind=d.kind, model=d.model, name=d.name, location=d.location)
                for d in self.site.devices
            ],
            health=self.health() if online else {},
        )

    def health(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = usage.ru_maxrss * 1024
        up = self.uplink.stats if self.uplink else None
        return {
            "uptime_s": round(time.time() - self._started_at, 1),
            "uplink": {
                "connected": bool(self.client and self.client.is_connected),
                "reconnects": self.client.reconnects if self.client else 0,
                "in_flight_batches": self.uplink.in_flight if self.uplink else 0,
                "batches_sent": up.batches_sent if up else 0,
                "resends": up.resends if up else 0,
            },
            "devices": {
                dev_id: {
                    "online": s.health.online,
                    "errors": s.health.errors,
                    "last_error": s.health.last_error,
                    "poll_ms": None if s.health.last_poll_ms is None else round(s.health.last_poll_ms, 2),
                    "missed_cycles": s.health.missed_cycles,
                }
                for dev_id, s in self.supervisors.items()
            },
            "service_failures": dict(self.service_failures),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_bytes": rss,
        }

    async def _status_loop(self) -> None:
        """Publish retained status on every (re)connect and health every interval."""
        assert self.client is not None and self.buffer is not None
        while True:
            await self.client.wait_connected(timeout=None)
            try:
                status = self._status(online=True)
                stats = await self.buffer.stats()
                status.health["buffer"] = {
                    "depth": stats.depth,
                    "oldest_age_s": stats.oldest_age_s,
                    "size_bytes": stats.size_bytes,
                    "evicted_total": stats.evicted_total,
                }
                await self.client.publish(
                    self.topics.status, status.to_bytes(), qos=1, retain=True, timeout=5
                )
            except MqttError as exc:
                self.log.warning("status.publish_failed", error=str(exc))
                await asyncio.sleep(1)
                continue
            # Wake early on a disconnect so the next connect re-announces us at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.health_interval_s):
                    await self.client.wait_disconnected()
