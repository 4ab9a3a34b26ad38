"""Uplink ingest: one MQTT subscription for every gateway's events, results and status.

Per message: check size, topic and schema (a bad one is rejected, counted and logged with its gateway,
and the loop carries on); store in ONE transaction; commit; only THEN acknowledge an event batch. A
redelivered batch is stored once (insert-or-ignore on the event ULID) and acknowledged again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import store
from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.schemas import EventOut, command_json
from cloud.settings import CloudSettings
from protocol.models import BatchAck, CommandResult, Event, EventBatch, GatewayStatus, event_severity, utcnow
from protocol.topics import PROTOCOL_SEGMENT, Topics
from steward.mqtt import Message, MqttClient, MqttError

log = structlog.get_logger("steward.cloud.ingest")


class Rejected(Exception):
    """An uplink message we will not store; ``reason`` is the metrics label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def uplink_filters(settings: CloudSettings) -> list[str]:
    """Shared subscriptions split events and results across cloud instances; status (retained, and
    not delivered to shared subscribers by most brokers) goes to every instance, which is harmless."""
    if not settings.shared_subscription:
        return [Topics.cloud_uplink_filter(settings.topic_prefix)]
    base = f"{settings.topic_prefix}/{PROTOCOL_SEGMENT}/+/+/up"
    share = f"$share/{settings.share_group}"
    return [f"{share}/{base}/events", f"{share}/{base}/results", f"{base}/status"]


EventListener = Callable[[EventBatch, list[Event]], Awaitable[None]]
KindHandler = Callable[[Topics, bytes], Awaitable[None]]


class Ingest:
    def __init__(
        self,
        settings: CloudSettings,
        sessions: async_sessionmaker[AsyncSession],
        mqtt: MqttClient,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.mqtt = mqtt
        self.hub = hub
        self.metrics = metrics
        self.ready = asyncio.Event()
        # Extension points for cloud features: called after a batch is committed and acknowledged,
        # with the events that were new; and handlers for further uplink kinds (e.g. "sync").
        self.listeners: list[EventListener] = []
        self.handlers: dict[str, KindHandler] = {}
        self.log = log.bind(
            client=settings.client_id, broker=f"{settings.broker_host}:{settings.broker_port}"
        )

    async def run(self) -> None:
        """Connect (retrying while the broker is away), subscribe, then handle messages until cancelled."""
        delay = 0.5
        while True:
            try:
                if not self.mqtt.is_connected:
                    await self.mqtt.connect(timeout=5)
                for topic_filter in uplink_filters(self.settings):
                    await self.mqtt.subscribe(topic_filter, qos=1)
                break
            except MqttError as exc:
                self.log.warning("ingest.broker_unavailable", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self.log.info("ingest.subscribed", filters=uplink_filters(self.settings))
        self.ready.set()
        async for message in self.mqtt.messages():
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        started = time.perf_counter()
        gateway = "?"
        try:
            try:
                topics, direction, kind = Topics.parse(self.settings.topic_prefix, message.topic)
            except ValueError as exc:
                raise Rejected("bad_topic", str(exc)) from None
            gateway = topics.gateway_id
            if direction != "up":
                return
            if len(message.payload) > self.settings.max_payload_bytes:
                raise Rejected(
                    "too_large", f"{len(message.payload)} bytes > limit {self.settings.max_payload_bytes}"
                )
            if kind == "events":
                await self._events(topics, message.payload, started)
            elif kind == "results":
                await self._result(topics, message.payload)
            elif kind == "status":
                await self._status(topics, message.payload)
            elif kind in self.handlers:
                await self.handlers[kind](topics, message.payload)
            else:
                raise Rejected("unknown_kind", f"unknown uplink kind {kind!r}")
        except Rejected as exc:
            self.metrics.rejected[exc.reason] += 1
            self.log.warning(
                "ingest.rejected",
                gateway=gateway,
                topic=message.topic,
                reason=exc.reason,
                detail=exc.detail[:500],
            )
        except SQLAlchemyError as exc:
            # Not acknowledged: the gateway resends and the store deduplicates.
            self.metrics.store_errors += 1
            self.log.error("ingest.store_failed", gateway=gateway, topic=message.topic, error=str(exc)[:500])
        except Exception:
            # The boundary of the loop: one bad message must never stop ingest for every estate.
            self.metrics.rejected["internal_error"] += 1
            self.log.exception("ingest.unexpected_error", gateway=gateway, topic=message.topic)

    @staticmethod
    def _parse(model: Any, payload: bytes, topics: Topics) -> Any:
        try:
            parsed = model.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "payload"
            kind = "malformed_json" if first["type"] == "json_invalid" else "invalid_schema"
            raise Rejected(
                kind, f"{model.__name__}: {where}: {first['msg']} ({exc.error_count()} error(s))"
            ) from None
        if parsed.gateway_id != topics.gateway_id:
            raise Rejected(
                "gateway_mismatch",
                f"payload gateway_id {parsed.gateway_id!r} is not the topic's gateway {topics.gateway_id!r}",
            )
        site = getattr(parsed, "site_id", topics.site_id)
        if site != topics.site_id:
            raise Rejected(
                "site_mismatch", f"payload site_id {site!r} does not match topic site {topics.site_id!r}"
            )
        return parsed

    async def _events(self, topics: Topics, payload: bytes, started: float) -> None:
        batch: EventBatch = self._parse(EventBatch, payload, topics)
        async with self.sessions() as session, session.begin():
            outcome = await store.ingest_batch(session, batch, utcnow(), self.settings.max_clock_skew_s)
        # Committed. Only now may the gateway forget these events.
        self.metrics.batches += 1
        self.metrics.events_stored += outcome.stored
        self.metrics.events_duplicate += outcome.duplicates
        ack = BatchAck(batch_id=batch.batch_id, stored=outcome.stored, duplicates=outcome.duplicates)
        try:
            await self.mqtt.publish(topics.acks, ack.to_bytes(), qos=1, timeout=10)
            self.metrics.observe_ack(time.perf_counter() - started)
        except MqttError as exc:
            self.log.warning(
                "ingest.ack_failed", gateway=topics.gateway_id, batch=batch.batch_id, error=str(exc)
            )
        bound = self.log.bind(gateway=topics.gateway_id, site=topics.site_id, batch=batch.batch_id)
        bound.debug("ingest.batch_stored", stored=outcome.stored, duplicates=outcome.duplicates)
        if abs(outcome.clock_skew_s) > self.settings.max_clock_skew_s:
            bound.warning("ingest.gateway_clock_skew", skew_s=round(outcome.clock_skew_s, 1))
        for listener in self.listeners:
            try:
                await listener(batch, outcome.new_events)
            except Exception:
                # Stored and acknowledged already; a failing feature must not stop ingest.
                self.log.exception("ingest.listener_failed", listener=getattr(listener, "__name__", "?"))
        if not self.hub.has_subscribers:
            return  # nobody is watching the live stream: skip building what nobody reads
        for event in outcome.new_events:
            self.hub.publish(
                "event",
                EventOut.model_validate(
                    {
                        **event.model_dump(mode="json"),
                        "site_id": batch.site_id,
                        "gateway_id": batch.gateway_id,
                        "severity": event_severity(event.type).value,
                        "stored_at": utcnow(),
                        "location": event.location.model_dump(exclude_none=True) if event.location else None,
                    }
                ).model_dump(mode="json"),
            )

    async def _result(self, topics: Topics, payload: bytes) -> None:
        result: CommandResult = self._parse(CommandResult, payload, topics)
        now = utcnow()
        async with self.sessions() as session, session.begin():
            await store.touch_gateway(session, topics.site_id, topics.gateway_id, now)
            changed = await store.apply_result(session, result, now)
        self.metrics.results += 1
        self.log.info(
            "ingest.command_result",
            gateway=topics.gateway_id,
            command=result.command_id,
            status=result.status.value,
            applied=changed is not None,
        )
        if changed is not None:
            self.metrics.commands[changed.status] += 1
            self.hub.publish("command", command_json(changed))

    async def _status(self, topics: Topics, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        status: GatewayStatus = self._parse(GatewayStatus, payload, topics)
        async with self.sessions() as session, session.begin():
            await store.apply_status(session, status, utcnow())
        self.metrics.statuses += 1
        self.log.info(
            "ingest.gateway_status",
            gateway=topics.gateway_id,
            online=status.online,
            devices=len(status.devices),
        )
        self.hub.publish(
            "gateway", {"id": status.gateway_id, "site_id": status.site_id, "online": status.online}
        )
