"""Uplink ingest: one MQTT subscription for every gateway's events, results and status.

Per message: check size, topic and schema (a bad one is rejected, counted and logged with its gateway,
and the loop carries on); store in ONE transaction; commit; only THEN acknowledge an event batch. A
redelivered batch is stored once (insert-or-ignore on the event ULID) and acknowledged again.

Stages, so a backlog drains at the store's speed, not one round trip per batch: a parse stage
checks and validates the next messages while the store stage waits on the database, and the store
stage commits the event batches that are already waiting together (group commit, at most
``GROUP_MAX_BATCHES`` / ``GROUP_MAX_EVENTS``; on a SQLite file the whole transaction on the
database's writer thread), then acknowledges each of them. Acks are handed to the MQTT client in
order right after the commit; their PUBACK is awaited off the loop, never before the next
transaction. A notify stage then gives the new events to the listeners (cloud features) and the
live stream while the next group commits. Messages are stored in the order they arrived; results
and status messages end a group, so nothing overtakes them.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import command_store, db, store
from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.schemas import EventOut, command_json
from cloud.settings import CloudSettings
from cloud.tables import CommandRow
from protocol.models import BatchAck, CommandResult, Event, EventBatch, GatewayStatus, event_severity, utcnow
from protocol.topics import PROTOCOL_SEGMENT, RESULTS_SUFFIX, Topics
from steward.mqtt import Message, MqttClient, MqttError

log = structlog.get_logger("steward.cloud.ingest")

GROUP_MAX_BATCHES = 16  # event batches committed in one transaction when they queue up
GROUP_MAX_EVENTS = 8000
PARSE_AHEAD = 32  # parsed messages waiting for the store stage
NOTIFY_AHEAD = 64  # stored batches waiting for the listeners
CHAIN_BATCHES = 2  # batches waiting that are handed to the writer thread while a group commits
SWITCH_INTERVAL_S = 0.0005  # sys.setswitchinterval for the process (see Ingest.run)
# gc.set_threshold for the process (see Ingest.run): a young collection per 20,000 allocations, not 700.
GC_THRESHOLDS = (20_000, 20, 100)
# A command result proves its gateway alive; saying so in the store at most this often is plenty for
# offline detection (minutes) and keeps the write off most results.
RESULT_SEEN_EVERY = timedelta(seconds=5)
_heap_frozen = False


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


@dataclass(slots=True)
class _Parsed:
    """An event batch that passed every check, waiting for the store stage."""

    topics: Topics
    batch: EventBatch
    started: float
    prepared: store.PreparedBatch | None = None  # None: ingest_batch prepares it itself


@dataclass(slots=True)
class _Other:
    """A status/extension message: handled whole, in order, by the store stage."""

    message: Message
    started: float


KindHandler = Callable[[Topics, bytes], Awaitable[None]]
_Invalid = list[tuple[str, str]]  # invalid events of a batch: (the event's JSON as received, why)


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
        self._acks_in_flight: set[asyncio.Task[None]] = set()
        self._queued = asyncio.Event()  # set by the parse stage on each message it queues
        # gateway id -> when (monotonic) a result next marks it seen here; an offline status forgets it
        self._result_seen: dict[str, float] = {}
        self.log = log.bind(
            client=settings.client_id, broker=f"{settings.broker_host}:{settings.broker_port}"
        )

    async def run(self) -> None:
        """Connect (retrying while the broker is away), subscribe, then handle messages until cancelled."""
        delay = 0.5
        self.mqtt.add_lane(RESULTS_SUFFIX)
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
        # What exists now (modules, the app, the engine) lives as long as the process. Parsing a batch
        # allocates tens of tracked objects per event, so the collector runs often; frozen, its full
        # collections no longer walk the whole start-up heap each time (in an ingest measurement this
        # halved the cost of parsing). Once per process: frozen cyclic garbage is never collected, so a
        # process that starts many clouds (the tests) must not keep freezing them.
        global _heap_frozen
        if not _heap_frozen:
            _heap_frozen = True
            gc.collect()
            gc.freeze()
            # Threads that hand work back and forth with the event loop (SQLite's writer and readers) wait
            # for the interpreter lock after each blocking call, and the loop, busy parsing a backlog,
            # gives it up only when it is asked to: by default after 5 ms, each time. A group commit
            # asks a dozen times.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            # A drained batch allocates ~30 tracked objects per event and keeps them until it is stored
            # and its listeners have run, so at the default thresholds they were walked again and again
            # as they aged through the generations: in a 300k drain the collector took 2.5 s of the
            # cloud's CPU (8 µs/event), two thirds of it in the older generations. At these it took 1.0
            # s, nearly all young collections; the frozen start-up heap keeps full collections cheap.
            if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
                gc.set_threshold(*GC_THRESHOLDS)
        self.ready.set()
        queue: asyncio.Queue[_Parsed | _Other] = asyncio.Queue(maxsize=PARSE_AHEAD)
        stored: asyncio.Queue[tuple[EventBatch, store.BatchOutcome]] = asyncio.Queue(maxsize=NOTIFY_AHEAD)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._parse_stage(queue), name="cloud-ingest-parse")
            tg.create_task(self._results_stage(), name="cloud-ingest-results")
            tg.create_task(self._notify_stage(stored), name="cloud-ingest-notify")
            await self._store_stage(queue, stored)

    async def _parse_stage(self, queue: asyncio.Queue[_Parsed | _Other]) -> None:
        # Neither a waiting message nor room in the queue suspends this loop, and validating and then
        # preparing a batch take milliseconds each: it yields after each step, so the store stage
        # goes on the moment its commit is done rather than after every message that came in meanwhile.
        async for message in self.mqtt.messages():
            item = self._classify(message, time.perf_counter())
            if isinstance(item, _Parsed):
                await asyncio.sleep(0)
                self._prepare(item)
            if item is not None:
                await queue.put(item)
                self._queued.set()
            await asyncio.sleep(0)

    async def _results_stage(self) -> None:
        # An operator waits on every command result, while after an outage the event pipeline can be
        # full of a backlog's batches (this stage would wait behind them, and the parse stage blocks on
        # a full queue). Results have their own lane from the MQTT client on: in order among
        # themselves, and they need no order against events.
        async for message in self.mqtt.messages(RESULTS_SUFFIX):
            await self.handle(message, time.perf_counter())

    def _classify(self, message: Message, started: float) -> _Parsed | _Other | None:
        """Check topic and size, and parse an event batch; None when rejected (counted, logged)."""
        gateway = "?"
        try:
            try:
                topics, direction, kind = Topics.parse(self.settings.topic_prefix, message.topic)
            except ValueError as exc:
                raise Rejected("bad_topic", str(exc)) from None
            gateway = topics.gateway_id
            if direction != "up":
                return None
            if kind != "events":
                return _Other(message, started)
            if len(message.payload) > self.settings.max_payload_bytes:
                raise Rejected(
                    "too_large", f"{len(message.payload)} bytes > limit {self.settings.max_payload_bytes}"
                )
            try:
                batch = self._parse(EventBatch, message.payload, topics)
            except Rejected as exc:
                if exc.reason != "invalid_schema":
                    raise
                return _Other(message, started)  # handle() keeps its valid events, in order
            return _Parsed(topics, batch, started)
        except Rejected as exc:
            self._rejected(exc, gateway, message.topic)
        except Exception:
            self.metrics.rejected["internal_error"] += 1
            self.log.exception("ingest.unexpected_error", gateway=gateway, topic=message.topic)
        return None

    def _prepare(self, item: _Parsed) -> None:
        """The store's per-event work that needs no database, done in the parse stage: it then overlaps
        the previous group's SQL instead of lengthening the transaction."""
        try:
            item.prepared = store.prepare_batch(item.batch, sqlite=not self.settings.is_postgres)
        except Exception:  # the store stage prepares it again, and fails it there with its reason
            self.log.exception("ingest.prepare_failed", gateway=item.topics.gateway_id)

    def _rejected(self, exc: Rejected, gateway: str, topic: str) -> None:
        self.metrics.rejected[exc.reason] += 1
        self.log.warning(
            "ingest.rejected", gateway=gateway, topic=topic, reason=exc.reason, detail=exc.detail[:500]
        )

    async def _notify_stage(self, stored: asyncio.Queue[tuple[EventBatch, store.BatchOutcome]]) -> None:
        # Listeners and the live stream after the commit and the ack, off the store stage's path: the
        # next group commits meanwhile. A slow listener holds the store stage back only once
        # NOTIFY_AHEAD batches wait here.
        while True:
            batch, outcome = await stored.get()
            await self._notify(batch, outcome)

    async def _store_stage(
        self,
        queue: asyncio.Queue[_Parsed | _Other],
        stored: asyncio.Queue[tuple[EventBatch, store.BatchOutcome]],
    ) -> None:
        held: _Other | None = None
        while True:
            item = held if held is not None else await queue.get()
            if isinstance(item, _Other):
                held = None
                await self.handle(item.message, item.started)
                continue
            group, held = self._take_group(item, queue)
            async with db.writes_on_thread(self.sessions) as writer:
                if writer is not None:
                    held = await self._chain(writer, group, held, queue, stored)
                    continue
            # A session: PostgreSQL, an in-memory SQLite.
            for done in await self._finish(group, self._commit(group), self._commit):
                await stored.put(done)

    @staticmethod
    def _take_group(
        first: _Parsed | _Other, queue: asyncio.Queue[_Parsed | _Other]
    ) -> tuple[list[_Parsed], _Other | None]:
        """``first`` and the event batches waiting behind it, up to a group's limits; and the status
        message that ended the group, if one did (handled after it: nothing overtakes it)."""
        if isinstance(first, _Other):
            return [], first
        group, events = [first], len(first.batch.events)
        while len(group) < GROUP_MAX_BATCHES and events < GROUP_MAX_EVENTS and not queue.empty():
            more = queue.get_nowait()
            if isinstance(more, _Other):
                return group, more
            group.append(more)
            events += len(more.batch.events)
        return group, None

    async def _chain(
        self,
        writer: db.ThreadWriter,
        group: list[_Parsed],
        held: _Other | None,
        queue: asyncio.Queue[_Parsed | _Other],
        stored: asyncio.Queue[tuple[EventBatch, store.BatchOutcome]],
    ) -> _Other | None:
        """Commit ``group`` on the database's writer thread. While it commits and ``CHAIN_BATCHES``
        batches wait, hand them over as the next group, so the thread starts it the moment this one
        ends rather than after the event loop, busy parsing, has seen that it did; unless another
        writer of this instance waits for the lock. Acknowledges each group as it ends. Returns the
        status message that ended a group, if one did."""
        running = deque([(group, self._submit(writer, group))])
        while running:
            group, submitted = running[0]
            if len(running) == 1 and held is None and not writer.contended:
                await self._done_or_queued(submitted.job, queue)
                if not submitted.job.done():
                    more, held = self._take_group(queue.get_nowait(), queue)
                    if more:
                        running.append((more, self._submit(writer, more)))
                    continue
            running.popleft()
            retry = functools.partial(self._commit_on_thread, writer)
            for done in await self._finish(group, submitted.result(), retry):
                await stored.put(done)
        return held

    def _submit(self, writer: db.ThreadWriter, group: list[_Parsed]) -> store.SubmittedGroup:
        batches = [(item.batch, item.prepared) for item in group]
        return store.submit_group(writer, batches, utcnow(), self.settings.max_clock_skew_s)

    async def _done_or_queued(self, job: asyncio.Future[Any], queue: asyncio.Queue[_Parsed | _Other]) -> None:
        while not job.done() and queue.qsize() < CHAIN_BATCHES:
            self._queued.clear()
            queued = asyncio.ensure_future(self._queued.wait())
            try:
                await asyncio.wait({job, queued}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                queued.cancel()

    async def _finish(
        self,
        group: list[_Parsed],
        outcomes: Awaitable[list[store.BatchOutcome]],
        commit: Callable[[list[_Parsed]], Awaitable[list[store.BatchOutcome]]],
    ) -> list[tuple[EventBatch, store.BatchOutcome]]:
        """Acknowledge a group once ``outcomes`` (its transaction) has ended; the batches stored, with their
        outcomes. If it failed, each batch gets a transaction of its own (``commit``), so one bad batch
        cannot hold back the others."""
        try:
            done = await outcomes
        except Exception as exc:
            if len(group) == 1:
                self._store_failed(group[0], exc)
                return []
            self.log.warning("ingest.group_failed_retrying_singly", batches=len(group), error=str(exc)[:200])
            return [stored for item in group for stored in await self._finish([item], commit([item]), commit)]
        for item, outcome in zip(group, done, strict=True):
            self._acknowledge(item.topics, item.batch.batch_id, outcome, item.started)
        return [(item.batch, outcome) for item, outcome in zip(group, done, strict=True)]

    async def _commit_on_thread(
        self, writer: db.ThreadWriter, group: list[_Parsed]
    ) -> list[store.BatchOutcome]:
        return await self._submit(writer, group).result()

    async def _commit(self, group: list[_Parsed]) -> list[store.BatchOutcome]:
        async with self.sessions() as session, session.begin():
            return await store.ingest_group(
                session,
                [(item.batch, item.prepared) for item in group],
                utcnow(),
                self.settings.max_clock_skew_s,
            )

    def _store_failed(self, item: _Parsed, exc: Exception) -> None:
        gateway, topic = item.topics.gateway_id, item.topics.events
        if isinstance(exc, SQLAlchemyError):
            # Not acknowledged: the gateway resends and the store deduplicates.
            self.metrics.store_errors += 1
            self.log.error("ingest.store_failed", gateway=gateway, topic=topic, error=str(exc)[:500])
        else:
            self.metrics.rejected["internal_error"] += 1
            self.log.error(
                "ingest.unexpected_error", gateway=gateway, topic=topic, error=repr(exc)[:500], exc_info=exc
            )

    async def handle(self, message: Message, started: float | None = None) -> None:
        """One message, start to finish (parse, store, commit, ack)."""
        started = time.perf_counter() if started is None else started
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
            self._rejected(exc, gateway, message.topic)
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
            raise Ingest._rejection(model, exc) from None
        Ingest._check_origin(parsed.gateway_id, getattr(parsed, "site_id", topics.site_id), topics)
        return parsed

    @staticmethod
    def _rejection(model: Any, exc: ValidationError) -> Rejected:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "payload"
        kind = "malformed_json" if first["type"] == "json_invalid" else "invalid_schema"
        return Rejected(kind, f"{model.__name__}: {where}: {first['msg']} ({exc.error_count()} error(s))")

    @staticmethod
    def _check_origin(gateway_id: str, site_id: str, topics: Topics) -> None:
        if gateway_id != topics.gateway_id:
            raise Rejected(
                "gateway_mismatch",
                f"payload gateway_id {gateway_id!r} is not the topic's gateway {topics.gateway_id!r}",
            )
        if site_id != topics.site_id:
            raise Rejected(
                "site_mismatch", f"payload site_id {site_id!r} does not match topic site {topics.site_id!r}"
            )

    @staticmethod
    def _salvage(
        payload: bytes, topics: Topics, exc: ValidationError
    ) -> tuple[dict[str, Any], EventBatch | None, _Invalid]:
        """An event batch that failed validation (``exc``) only inside some of its events: the batch as
        sent, its valid events as a batch (None if there are none), and each invalid one as (its JSON,
        why). Raises :class:`Rejected` when anything else is wrong with it: then nothing can be trusted."""
        failure = Ingest._rejection(EventBatch, exc)
        why: dict[int, str] = {}
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            if len(loc) < 2 or loc[0] != "events" or not isinstance(loc[1], int):
                raise failure  # the envelope, or the list itself (empty, too long): not one event's fault
            why.setdefault(loc[1], f"{'.'.join(map(str, loc[2:])) or 'event'}: {error['msg']}")
        raw = json.loads(payload)  # valid JSON: only events failed
        Ingest._check_origin(raw["gateway_id"], raw["site_id"], topics)
        events = raw["events"]
        good = [event for i, event in enumerate(events) if i not in why]
        try:
            batch = EventBatch.model_validate({**raw, "events": good}) if good else None
        except ValidationError:
            raise failure from None  # never seen: what passed in JSON should pass as Python values too
        bad = [(json.dumps(events[i], ensure_ascii=False), why[i][:500]) for i in sorted(why)]
        return raw, batch, bad

    async def _events(self, topics: Topics, payload: bytes, started: float) -> None:
        """A batch the parse stage could not take whole (see :meth:`_classify`), or any batch handed to
        :meth:`handle`: its valid events are stored and the invalid ones kept as received
        (``rejected_events``), in one transaction; then the ack counts them all, so the gateway stops
        resending a batch that would never be taken whole."""
        raw: dict[str, Any] = {}
        bad: _Invalid = []
        batch: EventBatch | None
        try:
            batch = EventBatch.model_validate_json(payload)
        except ValidationError as exc:
            raw, batch, bad = self._salvage(payload, topics, exc)  # validated once, not again to salvage
        else:
            self._check_origin(batch.gateway_id, batch.site_id, topics)
        now = utcnow()
        async with self.sessions() as session, session.begin():
            outcome = (
                await store.ingest_batch(session, batch, now, self.settings.max_clock_skew_s)
                if batch is not None
                else store.BatchOutcome(stored=0, duplicates=0)
            )
            if bad:
                await store.keep_rejected(
                    session,
                    bad,
                    site_id=topics.site_id,
                    gateway_id=topics.gateway_id,
                    batch_id=raw["batch_id"],
                    now=now,
                )
        if bad:
            self.metrics.events_rejected += len(bad)
            self.log.warning(
                "ingest.events_rejected",
                gateway=topics.gateway_id,
                site=topics.site_id,
                batch=raw["batch_id"],
                rejected=len(bad),
                stored=outcome.stored,
                first=bad[0][1],
            )
        batch_id = batch.batch_id if batch is not None else raw["batch_id"]
        self._acknowledge(topics, batch_id, outcome, started, rejected=len(bad))
        if batch is not None:
            await self._notify(batch, outcome)

    def _acknowledge(
        self,
        topics: Topics,
        batch_id: str,
        outcome: store.BatchOutcome,
        started: float,
        *,
        rejected: int = 0,
    ) -> None:
        # Committed. Only now may the gateway forget these events. ``error`` stays unset for rejected
        # events: a gateway resends a batch whose ack carries one (the cloud could not commit it).
        self.metrics.batches += 1
        self.metrics.events_stored += outcome.stored
        self.metrics.events_duplicate += outcome.duplicates
        ack = BatchAck(
            batch_id=batch_id, stored=outcome.stored, duplicates=outcome.duplicates, rejected=rejected
        )
        self._send_ack(topics, batch_id, ack.to_bytes(), started)
        where = {"gateway": topics.gateway_id, "site": topics.site_id, "batch": batch_id}
        self.log.debug("ingest.batch_stored", **where, stored=outcome.stored, duplicates=outcome.duplicates)
        if abs(outcome.clock_skew_s) > self.settings.max_clock_skew_s:
            self.log.warning("ingest.gateway_clock_skew", **where, skew_s=round(outcome.clock_skew_s, 1))

    async def _notify(self, batch: EventBatch, outcome: store.BatchOutcome) -> None:
        """A stored batch's new events to the listeners (cloud features) and the live stream."""
        for listener in self.listeners:
            try:
                await listener(batch, outcome.new_events)
            except Exception:
                # Stored and acknowledged already; a failing feature must not stop ingest.
                self.log.exception("ingest.listener_failed", listener=getattr(listener, "__name__", "?"))
        if not self.hub.wants("event", batch.site_id):
            return  # no stream reads this estate's events: skip building what nobody reads
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

    def _send_ack(self, topics: Topics, batch_id: str, payload: bytes, started: float) -> None:
        """Hand the ack to the MQTT client now (in commit order) and await its PUBACK in a task: the
        next transaction does not wait for the broker's round trip."""

        async def publish() -> None:
            try:
                await self.mqtt.publish(topics.acks, payload, qos=1, timeout=10)
                self.metrics.observe_ack(time.perf_counter() - started)
            except MqttError as exc:
                self.log.warning(
                    "ingest.ack_failed", gateway=topics.gateway_id, batch=batch_id, error=str(exc)
                )

        task = asyncio.get_running_loop().create_task(publish())
        self._acks_in_flight.add(task)
        task.add_done_callback(self._acks_in_flight.discard)

    async def _result(self, topics: Topics, payload: bytes) -> None:
        result: CommandResult = self._parse(CommandResult, payload, topics)
        now = utcnow()
        due = time.monotonic() >= self._result_seen.get(topics.gateway_id, 0.0)

        def transaction(conn: Connection) -> CommandRow | None:
            changed = command_store.apply_result(conn, result, now)
            if due:  # one statement less on most results
                command_store.mark_gateway_seen(conn, topics.gateway_id, now, RESULT_SEEN_EVERY)
            return changed

        changed = await db.write(self.sessions, transaction)
        if due:
            self._result_seen[topics.gateway_id] = time.monotonic() + RESULT_SEEN_EVERY.total_seconds()
        self.metrics.results += 1
        self.log.info(
            "ingest.command_result",
            gateway=topics.gateway_id,
            command=result.command_id,
            status=result.status.value,
            applied=changed is not None,
        )
        if changed is not None:
            self.metrics.command_changed(changed)
            self.hub.publish("command", command_json(changed), row=changed)

    async def _status(self, topics: Topics, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        status: GatewayStatus = self._parse(GatewayStatus, payload, topics)
        async with self.sessions() as session, session.begin():
            await store.apply_status(session, status, utcnow())
        if not status.online:
            self._result_seen.pop(status.gateway_id, None)
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
