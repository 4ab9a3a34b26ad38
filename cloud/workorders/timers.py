"""What the timer loop does each tick, against the database (so it survives restarts and runs once
across instances): fire due timers (escalations, devices offline too long), look for gateways offline too
long, run the nightly meter checks and open planned maintenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.tables import Device, Gateway, Reading, Site
from cloud.workorders import store
from cloud.workorders.intake import spec_for
from cloud.workorders.rules import Deadlines, Rule, RuleSet
from cloud.workorders.schedules import MaintenancePlan
from cloud.workorders.store import NewWorkOrder
from cloud.workorders.tables import Escalation, PlannedRun, Timer, WebhookDelivery, WorkOrder

log = structlog.get_logger("steward.cloud.workorders.timers")


@dataclass(slots=True)
class TickReport:
    escalations: list[tuple[int, str, int]] = field(default_factory=list)  # (work order, deadline, level)
    opened: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    skipped: int = 0
    delivered: int = 0


def escalation_payload(wo: WorkOrder, esc: Escalation, now: datetime) -> dict[str, Any]:
    return {
        "type": "work_order.escalated",
        "escalation": {
            "level": esc.level,
            "notify": esc.notify,
            "deadline": esc.deadline,
            "due_at": esc.due_at.isoformat(),
            "overdue_s": round((now - esc.due_at).total_seconds()),
            "at": esc.at.isoformat(),
        },
        "work_order": {
            "id": wo.id,
            "title": wo.title,
            "category": wo.category,
            "priority": wo.priority,
            "status": wo.status,
            "teams": wo.teams,
            "site_id": wo.site_id,
            "device_id": wo.device_id,
            "apartment": wo.apartment,
            "location": wo.location,
            "assignee": wo.assignee,
            "response_due": wo.response_due.isoformat(),
            "resolution_due": wo.resolution_due.isoformat(),
        },
    }


def deadline_met(wo: WorkOrder, deadline: str) -> bool:
    if wo.status in store.FINAL:
        return True
    if deadline == "response":
        return wo.acknowledged_at is not None
    return wo.resolved_at is not None


class Ticker:
    """One tick's work on one instance; the claims make it safe to run on every instance at once."""

    def __init__(self, rules: RuleSet, plan: MaintenancePlan, instance: str, webhook: bool) -> None:
        self.rules = rules
        self.plan = plan
        self.instance = instance
        self.webhook = webhook
        # A cache only (the table decides): periods this instance saw taken, kept once committed.
        self._periods_done: set[tuple[str, str, str]] = set()
        self._periods_pending: set[tuple[str, str, str]] = set()

    def committed(self, ok: bool) -> None:
        if ok:
            self._periods_done |= self._periods_pending
        self._periods_pending.clear()

    # ---- timers ---------------------------------------------------------------------------------
    async def fire_timers(self, session: AsyncSession, now: datetime, report: TickReport) -> None:
        for timer in await store.claim(session, now, self.instance):
            try:
                async with session.begin_nested():
                    outcome = await self._fire(session, timer, now, report)
            except Exception:
                log.exception("timer.failed", timer=timer.id, kind=timer.kind)
                outcome = "failed"
            timer.done_at, timer.outcome = now, outcome
            report.skipped += outcome == "skipped"

    async def _fire(self, session: AsyncSession, timer: Timer, now: datetime, report: TickReport) -> str:
        if timer.kind == "escalation":
            return await self._escalate(session, timer, now, report)
        if timer.kind == "offline":
            return await self._device_offline(session, timer, now, report)
        return "skipped"

    async def _escalate(self, session: AsyncSession, timer: Timer, now: datetime, report: TickReport) -> str:
        assert timer.work_order_id is not None and timer.deadline and timer.level
        wo = await session.scalar(
            store.locked(session, select(WorkOrder).where(WorkOrder.id == timer.work_order_id))
        )
        if wo is None or deadline_met(wo, timer.deadline):
            return "skipped"
        levels = self.rules.escalation
        notify = levels[timer.level - 1].notify if timer.level <= len(levels) else f"level {timer.level}"
        due = wo.response_due if timer.deadline == "response" else wo.resolution_due
        esc = Escalation(
            work_order_id=wo.id,
            deadline=timer.deadline,
            level=timer.level,
            notify=notify,
            due_at=due,
            at=now,
            instance=self.instance,
        )
        session.add(esc)
        wo.escalation_level = max(wo.escalation_level, timer.level)
        wo.updated_at = now
        if self.webhook:
            session.add(
                WebhookDelivery(
                    work_order_id=wo.id,
                    payload=escalation_payload(wo, esc, now),
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        log.warning(
            "work_order.escalated",
            work_order=wo.id,
            deadline=timer.deadline,
            level=timer.level,
            notify=notify,
        )
        report.escalations.append((wo.id, timer.deadline, timer.level))
        return "fired"

    async def _device_offline(
        self, session: AsyncSession, timer: Timer, now: datetime, report: TickReport
    ) -> str:
        rule = self._rule(timer.rule_id)
        device = await session.get(Device, timer.device_id) if timer.device_id else None
        if rule is None or device is None:
            return "skipped"
        link = (device.state or {}).get("link") or {}
        if link.get("value") != "offline":
            return "skipped"  # came back (device.online cancels the timer; this is the belt and braces)
        fields = {
            "site_id": timer.data.get("site_id") or device.site_id,
            "gateway_id": timer.data.get("gateway_id") or device.gateway_id,
            "device_id": device.id,
            "type": "device.offline",
            "data": {"since": timer.data.get("since"), "reason": timer.data.get("reason")},
            "location": timer.data.get("location") or device.location or {},
        }
        spec = spec_for(self.rules, rule, fields, at=timer.due_at)
        spec.event_type = "device.offline"
        wo, created = await store.open_or_attach(session, spec, now, self.rules.escalation, attach=False)
        if created:
            report.opened.append(wo.id)
        return "fired"

    def _rule(self, rule_id: str | None) -> Rule | None:
        return next((r for r in self.rules.rules if r.id == rule_id), None)

    # ---- gateways -------------------------------------------------------------------------------
    async def check_gateways(self, session: AsyncSession, now: datetime, report: TickReport) -> None:
        for rule in self.rules.rules:
            if rule.kind != "offline" or rule.target != "gateway":
                continue
            assert rule.after is not None
            since = func.coalesce(Gateway.last_seen, Gateway.status_at)
            rows = await session.execute(
                select(Gateway)
                .where(Gateway.online.is_(False), since < now - rule.after)
                .order_by(Gateway.id)
            )
            for gw in rows.scalars():
                fields = {
                    "site_id": gw.site_id,
                    "gateway_id": gw.id,
                    "device_id": None,
                    "type": "gateway.offline",
                    "data": {
                        "gateway": gw.id,
                        "last_seen": (gw.last_seen or gw.status_at or now).isoformat(),
                    },
                    "location": {},
                }
                spec = spec_for(self.rules, rule, fields, at=now)
                spec.event_type = "gateway.offline"
                wo, created = await store.open_or_attach(
                    session, spec, now, self.rules.escalation, attach=False
                )
                if created:
                    report.opened.append(wo.id)
            open_rows = await session.execute(
                select(WorkOrder, Gateway.online)
                .join(Gateway, Gateway.id == WorkOrder.gateway_id)
                .where(
                    WorkOrder.rule_id == rule.id,
                    WorkOrder.open_key.is_not(None),
                    WorkOrder.cleared_at.is_(None),
                    Gateway.online.is_(True),
                )
            )
            for wo, _online in open_rows.all():
                wo.cleared_at, wo.cleared_by, wo.updated_at = now, "gateway.online", now
                report.cleared.append(wo.id)

    # ---- nightly checks -------------------------------------------------------------------------
    async def check_nights(self, session: AsyncSession, now: datetime, report: TickReport) -> None:
        rules = [r for r in self.rules.rules if r.kind == "night"]
        if not rules:
            return
        sites = await _site_zones(session)
        for rule in rules:
            for site, reported in sites.items():
                zone = self.rules.zone(site, reported)
                local = now.astimezone(zone)
                end = time.fromisoformat(rule.end)
                if local.time() < end:
                    continue
                night = local.date()
                if not await self._claim_once(session, f"rule:{rule.id}", site, night.isoformat(), now):
                    continue
                start_at = datetime.combine(night, time.fromisoformat(rule.start), tzinfo=zone)
                end_at = datetime.combine(night, end, tzinfo=zone)
                await self._night(
                    session, rule, site=site, start_at=start_at, end_at=end_at, now=now, report=report
                )

    async def _night(
        self,
        session: AsyncSession,
        rule: Rule,
        *,
        site: str,
        start_at: datetime,
        end_at: datetime,
        now: datetime,
        report: TickReport,
    ) -> None:
        rows = await session.execute(
            select(Reading.device_id, func.count(), func.min(Reading.value), func.max(Reading.value))
            .join(Device, Device.id == Reading.device_id)
            .where(
                Device.site_id == site,
                Reading.point == rule.point,
                Reading.ts_ms >= int(start_at.timestamp() * 1000),
                Reading.ts_ms < int(end_at.timestamp() * 1000),
            )
            .group_by(Reading.device_id)
        )
        for device_id, count, low, high in rows.all():
            if count < rule.min_readings or low is None or low <= 0:
                continue
            device = await session.get(Device, device_id)
            fields = {
                "site_id": site,
                "gateway_id": device.gateway_id if device else None,
                "device_id": device_id,
                "type": "meter.night_flow",
                "data": {
                    "point": rule.point,
                    "readings": int(count),
                    "min": float(low),
                    "max": float(high),
                    "night": start_at.date().isoformat(),
                },
                "location": (device.location if device else None) or {},
            }
            spec = spec_for(self.rules, rule, fields, at=end_at)
            spec.event_type = "meter.night_flow"
            wo, created = await store.open_or_attach(session, spec, now, self.rules.escalation)
            if created:
                report.opened.append(wo.id)

    # ---- planned maintenance --------------------------------------------------------------------
    async def open_schedules(self, session: AsyncSession, now: datetime, report: TickReport) -> None:
        if not self.plan.schedules:
            return
        known = await _site_zones(session)
        for schedule in self.plan.schedules:
            for site in schedule.sites or list(known):
                zone = self._plan_zone(site, known.get(site))
                period, due = schedule.due(now, zone)
                if now < due:
                    continue
                if not await self._claim_once(session, f"schedule:{schedule.id}", site, period, now):
                    continue
                base = self.rules.priority_deadlines[schedule.priority]
                wo, _ = await store.open_or_attach(
                    session,
                    NewWorkOrder(
                        source="schedule",
                        category=schedule.category,
                        priority=schedule.priority,
                        teams=schedule.teams,
                        title=f"{schedule.title} ({period})",
                        description=schedule.description,
                        deadlines=Deadlines(
                            response=schedule.response or base.response,
                            resolution=schedule.resolution or base.resolution,
                        ),
                        created_by=f"schedule:{schedule.id}",
                        site_id=site,
                        data={"schedule": schedule.id, "period": period},
                        seen_at=due,
                    ),
                    now,
                    self.rules.escalation,
                )
                await session.execute(
                    update(PlannedRun)
                    .where(
                        PlannedRun.schedule_id == f"schedule:{schedule.id}",
                        PlannedRun.site_id == site,
                        PlannedRun.period == period,
                    )
                    .values(work_order_id=wo.id)
                )
                report.opened.append(wo.id)
                log.info(
                    "work_order.planned", schedule=schedule.id, site=site, period=period, work_order=wo.id
                )

    def _plan_zone(self, site: str, reported: str | None) -> Any:
        """As :meth:`RuleSet.zone`, with the plan's own default, if it names one, before the rules'."""
        from zoneinfo import ZoneInfo

        if self.plan.timezone is None:
            return self.rules.zone(site, reported)
        return ZoneInfo(self.rules.site_timezones.get(site) or reported or self.plan.timezone)

    async def _claim_once(
        self, session: AsyncSession, what: str, site: str, period: str, now: datetime
    ) -> bool:
        key = (what, site, period)
        if key in self._periods_done:
            return False
        self._periods_pending.add(key)
        return await store.claim_period(
            session, schedule_id=what, site_id=site, period=period, instance=self.instance, now=now
        )


async def _site_zones(session: AsyncSession) -> dict[str, str | None]:
    """Every site the cloud knows, in id order, with the time zone its gateways report (None: not yet)."""
    rows = await session.execute(select(Site.id, Site.timezone).order_by(Site.id))
    return {site: zone for site, zone in rows.all()}
