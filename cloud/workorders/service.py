"""The work order service: wires rules, intake, lifecycle, timers and the webhook to the database.

Time comes from ``clock`` (injected: tests move it instead of sleeping). Each public method is one
transaction; the timer loop runs :meth:`tick` every ``workorder_tick_s`` on every instance. Every work
order opened, changed or escalated goes to the live stream (``work_order``) after its commit, so an
operator's console shows a fire alarm's work order the moment it exists instead of at its next refresh.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import db
from cloud.db import make_read_sessions
from cloud.errors import CloudError, NotFound
from cloud.hub import Hub
from cloud.workorders import intake, lifecycle, report, store
from cloud.workorders.lifecycle import FollowUp, Status
from cloud.workorders.rules import Priority, RulesError, RuleSet, event_fields, load_rules
from cloud.workorders.schedules import MaintenancePlan, load_plan
from cloud.workorders.schemas import (
    EscalationOut,
    ManualWorkOrderIn,
    OccurrenceOut,
    TransitionIn,
    TransitionOut,
    WorkOrderDetail,
    WorkOrderOut,
    WorkOrderPage,
    WorkOrderReport,
)
from cloud.workorders.settings import WorkOrderSettings
from cloud.workorders.store import NewWorkOrder
from cloud.workorders.tables import Escalation, Occurrence, Transition, WorkOrder
from cloud.workorders.timers import Ticker, TickReport
from cloud.workorders.webhook import WebhookSender
from protocol.models import Event, EventBatch, utcnow

log = structlog.get_logger("steward.cloud.workorders")
Clock = Callable[[], datetime]


class BadCursor(CloudError):
    status = 400
    code = "bad_cursor"


def load_config(settings: WorkOrderSettings) -> tuple[RuleSet, MaintenancePlan]:
    """Both files validated whole; a missing default file means none of that kind (logged)."""

    def _read(path: Path, loader: Callable[[Path], object], empty: object) -> object:
        if not path.exists():
            log.warning("workorders.config_missing", file=str(path))
            return empty
        return loader(path)

    rules = _read(settings.rules_file, load_rules, RuleSet())
    plan = _read(settings.maintenance_file, load_plan, MaintenancePlan())
    assert isinstance(rules, RuleSet) and isinstance(plan, MaintenancePlan)
    return rules, plan


class WorkOrderService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: WorkOrderSettings,
        *,
        instance: str,
        rules: RuleSet | None = None,
        plan: MaintenancePlan | None = None,
        clock: Clock = utcnow,
        hub: Hub | None = None,
    ) -> None:
        if rules is None or plan is None:
            loaded_rules, loaded_plan = load_config(settings)
            rules = loaded_rules if rules is None else rules
            plan = loaded_plan if plan is None else plan
        self.sessions = sessions
        self.read_sessions = make_read_sessions(sessions)
        self.settings = settings
        self.rules = rules
        self.plan = plan
        self.instance = instance
        self.clock = clock
        self.hub = hub
        self.webhook = WebhookSender(settings, sessions, instance)
        self.ticker = Ticker(rules, plan, instance, self.webhook.enabled)
        self._index = rules.index()

    # ---- ingest ---------------------------------------------------------------------------------
    async def on_events(self, batch: EventBatch, new_events: list[Event]) -> None:
        """The ingest listener: called after each committed batch with its new events."""
        site_id, gateway_id, is_relevant = batch.site_id, batch.gateway_id, self._index.relevant
        # The type first, inline: a backlog's meter readings concern no rule, and a call per event to
        # say so was a few percent of ingest's event loop.
        types = self._index.by_type
        relevant = [e for e in new_events if e.type in types and is_relevant(site_id, gateway_id, e)]
        if not relevant:
            return
        # Most relevant events only clear a condition that is not open (every gate movement clears
        # "gate fault"): one read tells, instead of a write transaction that holds SQLite's write lock
        # for a command's result to queue behind. Another instance opening one of these work orders
        # at this very moment is not seen by the read; its fault event came first, so ingest ordering
        # makes that rare, and the work order stays open for people either way (clearing only notes
        # that the condition is over).
        keys: list[str] = []
        for event in relevant:
            fields = event_fields(site_id, gateway_id, event)
            found = intake.clear_keys_only(self.rules, fields, event.device_id)
            if found is None:
                break
            keys += found
        else:
            if not keys or not await db.read(self.sessions, store.any_uncleared, keys):
                return
        now = self.clock()
        async with self.sessions() as session, session.begin():
            touched = []
            for event in relevant:
                touched += await intake.handle_event(
                    session,
                    self.rules,
                    site_id=batch.site_id,
                    gateway_id=batch.gateway_id,
                    event=event,
                    now=now,
                )
        await self._announce(wo.id for wo, _ in touched)
        for wo, created in touched:
            if created:
                log.info(
                    "work_order.opened",
                    work_order=wo.id,
                    rule=wo.rule_id,
                    device=wo.device_id,
                    priority=wo.priority,
                )

    # ---- timers ---------------------------------------------------------------------------------
    async def tick(self) -> TickReport:
        """One pass of the timer loop at ``clock()``: safe on every instance at once."""
        now = self.clock()
        result = TickReport()
        ok = False
        try:
            async with self.sessions() as session, session.begin():
                await self.ticker.fire_timers(session, now, result)
                await self.ticker.check_gateways(session, now, result)
                await self.ticker.check_nights(session, now, result)
                await self.ticker.open_schedules(session, now, result)
            ok = True
        finally:
            self.ticker.committed(ok)
        await self._announce([*(e[0] for e in result.escalations), *result.opened, *result.cleared])
        result.delivered = await self.webhook.deliver_due(now)
        return result

    async def run(self) -> None:
        """The timer loop, until cancelled. A database error is logged and retried next tick."""
        log.info("workorders.started", rules=len(self.rules.rules), schedules=len(self.plan.schedules))
        while True:
            await asyncio.sleep(self.settings.workorder_tick_s)
            try:
                await self.tick()
            except SQLAlchemyError as exc:
                log.error("workorders.tick_failed", error=str(exc)[:500])

    # ---- API operations -------------------------------------------------------------------------
    async def create_manual(self, req: ManualWorkOrderIn) -> WorkOrderDetail:
        category = req.full_category
        cat, deadlines = self.rules.manual_deadlines(category)
        priority = req.priority or cat.priority
        if req.priority is not None and req.priority != cat.priority:
            base = self.rules.priority_deadlines[req.priority]
            deadlines = type(deadlines)(
                response=min(base.response, deadlines.response),
                resolution=min(base.resolution, deadlines.resolution),
            )
        where = " ".join(p for p in (req.building, req.apartment) if p)
        title = req.title or f"{category.replace('.', ' ').capitalize()}: {where or req.site_id}"
        location = {k: v for k, v in (("building", req.building), ("apartment", req.apartment)) if v}
        now = self.clock()
        async with self.sessions() as session, session.begin():
            wo, _ = await store.open_or_attach(
                session,
                NewWorkOrder(
                    source="manual",
                    category=category,
                    priority=Priority(priority),
                    teams=cat.teams,
                    title=title,
                    description=req.description,
                    deadlines=deadlines,
                    created_by=req.actor,
                    site_id=req.site_id,
                    apartment=req.apartment,
                    location=location or None,
                    data={"contact": req.contact} if req.contact else {},
                ),
                now,
                self.rules.escalation,
            )
            work_order_id = wo.id
        log.info("work_order.opened", work_order=work_order_id, source="manual", category=category)
        return self._announced(await self.detail(work_order_id))

    async def transition(self, work_order_id: int, req: TransitionIn) -> WorkOrderDetail:
        now = self.clock()
        follow_up = (
            FollowUp(req.follow_up.reached, req.follow_up.satisfaction, req.follow_up.comment)
            if req.follow_up
            else None
        )
        async with self.sessions() as session, session.begin():
            wo = await session.scalar(
                store.locked(session, select(WorkOrder).where(WorkOrder.id == work_order_id))
            )
            if wo is None:
                raise NotFound(f"no work order {work_order_id}")
            await lifecycle.apply(
                session,
                wo,
                Status(req.to),
                req.actor,
                now,
                assignee=req.assignee,
                note=req.note,
                follow_up=follow_up,
            )
        log.info("work_order.transition", work_order=work_order_id, to=req.to.value, actor=req.actor)
        return self._announced(await self.detail(work_order_id))

    # ---- the live stream ------------------------------------------------------------------------
    def _announced(self, detail: WorkOrderDetail) -> WorkOrderDetail:
        if self.hub is not None:
            self.hub.publish("work_order", detail.model_dump(mode="json", include=_OUT_FIELDS))
        return detail

    async def _announce(self, ids: Iterable[int]) -> None:
        """Committed changes to these work orders, as the API lists them, to the live stream."""
        wanted = sorted(set(ids))
        if not wanted or self.hub is None or not self.hub.has_subscribers:
            return
        now = self.clock()
        try:
            async with self.read_sessions() as session:
                found = await session.execute(select(WorkOrder).where(WorkOrder.id.in_(wanted)))
                rows = list(found.scalars())
        except SQLAlchemyError as exc:
            # Committed already: a console misses the live update and sees it at its next refresh; the
            # caller (the timer loop's webhooks, ingest's other listeners) must not stop for it.
            log.warning("work_order.announce_failed", work_orders=wanted, error=str(exc)[:300])
            return
        for wo in rows:
            out = WorkOrderOut.model_validate(self._out(wo, now)).model_dump(mode="json")
            self.hub.publish("work_order", out)

    def _out(self, wo: WorkOrder, now: datetime) -> dict[str, object]:
        final = wo.status in store.FINAL
        response_left = None if final or wo.acknowledged_at else (wo.response_due - now).total_seconds()
        resolution_left = None if final or wo.resolved_at else (wo.resolution_due - now).total_seconds()
        overdue = any(v is not None and v < 0 for v in (response_left, resolution_left))
        return {
            **WorkOrderOut.model_validate(wo).model_dump(
                exclude={"response_left_s", "resolution_left_s", "overdue"}
            ),
            "response_left_s": response_left,
            "resolution_left_s": resolution_left,
            "overdue": overdue,
        }

    async def detail(self, work_order_id: int) -> WorkOrderDetail:
        now = self.clock()
        async with self.read_sessions() as session:
            wo = await session.get(WorkOrder, work_order_id)
            if wo is None:
                raise NotFound(f"no work order {work_order_id}")
            occurrences = await session.execute(
                select(Occurrence)
                .where(Occurrence.work_order_id == wo.id)
                .order_by(Occurrence.at.desc(), Occurrence.id.desc())
                .limit(100)
            )
            history = await session.execute(
                select(Transition).where(Transition.work_order_id == wo.id).order_by(Transition.id)
            )
            escalations = await session.execute(
                select(Escalation).where(Escalation.work_order_id == wo.id).order_by(Escalation.id)
            )
            return WorkOrderDetail.model_validate(
                {
                    **self._out(wo, now),
                    "recent_occurrences": [OccurrenceOut.model_validate(o) for o in occurrences.scalars()],
                    "history": [TransitionOut.model_validate(t) for t in history.scalars()],
                    "escalations": [EscalationOut.model_validate(e) for e in escalations.scalars()],
                }
            )

    async def page(
        self,
        *,
        site: str | None = None,
        status: str | None = None,
        priority: str | None = None,
        category: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        sites: frozenset[str] | None = None,
    ) -> WorkOrderPage:
        """``sites``: only these sites (the caller's), None for all."""
        query = select(WorkOrder).order_by(WorkOrder.id.desc())
        if sites is not None:
            query = query.where(WorkOrder.site_id.in_(sorted(sites)))
        for column, value in (
            (WorkOrder.site_id, site),
            (WorkOrder.status, status),
            (WorkOrder.priority, priority),
            (WorkOrder.category, category),
        ):
            if value:
                query = query.where(column == value)
        if cursor:
            query = query.where(WorkOrder.id < _decode(cursor))
        now = self.clock()
        async with self.read_sessions() as session:
            rows = list((await session.execute(query.limit(limit + 1))).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return WorkOrderPage(
            items=[WorkOrderOut.model_validate(self._out(r, now)) for r in rows],
            next_cursor=_encode(rows[-1].id) if more and rows else None,
        )

    async def report(self, site: str | None, start: datetime | None, end: datetime | None) -> WorkOrderReport:
        query = select(WorkOrder)
        if site:
            query = query.where(WorkOrder.site_id == site)
        if start:
            query = query.where(WorkOrder.created_at >= start)
        if end:
            query = query.where(WorkOrder.created_at < end)
        async with self.read_sessions() as session:
            rows = list((await session.execute(query)).scalars())
        return report.build(rows, self.clock(), site, start, end)


_OUT_FIELDS = set(WorkOrderOut.model_fields)


def _encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"w|{last_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor is not one this API returned") from None
    if kind != "w" or not value.isdigit():
        raise BadCursor("cursor does not belong to the work order listing")
    return int(value)


__all__ = ["BadCursor", "Clock", "RulesError", "WorkOrderService", "load_config"]
