"""Events in, work orders out: match each new event against the rules, inside the caller's transaction."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.tables import Device, EventRow
from cloud.workorders import store
from cloud.workorders.rules import Rule, RuleSet, event_fields, matches, render
from cloud.workorders.store import NewWorkOrder
from cloud.workorders.tables import Timer, WorkOrder
from protocol.models import Event

RULE_ACTOR = "rule"


def title_for(rule: Rule, fields: dict[str, Any]) -> str:
    text = re.sub(r"\s+", " ", render(rule.title, fields))
    return re.sub(r"\(\s*\)", "", text).strip(" -:") or rule.id


def spec_for(
    rules: RuleSet, rule: Rule, fields: dict[str, Any], *, at: datetime, event: Event | None = None
) -> NewWorkOrder:
    data = {k: v for k, v in fields.get("data", {}).items() if not isinstance(v, dict | list)}
    return NewWorkOrder(
        source="rule",
        rule_id=rule.id,
        condition_key=rule.condition_key(fields),
        category=rule.category,
        priority=rule.priority,
        teams=rule.teams,
        title=title_for(rule, fields),
        deadlines=rule.deadlines(rules.priority_deadlines),
        created_by=f"{RULE_ACTOR}:{rule.id}",
        site_id=fields.get("site_id"),
        gateway_id=fields.get("gateway_id"),
        device_id=fields.get("device_id"),
        apartment=(fields.get("location") or {}).get("apartment"),
        location=fields.get("location") or None,
        data=data,
        seen_at=at,
        event_id=event.id if event else None,
        event_type=event.type if event else None,
    )


async def _with_device_location(session: AsyncSession, spec: NewWorkOrder) -> NewWorkOrder:
    if spec.location or not spec.device_id:
        return spec
    device = await session.get(Device, spec.device_id)
    # Device ids are unique across sites; an id another site holds (cloud.store._foreign_claim) names
    # that site's device, whose location would send the work order's team to the wrong estate.
    if device is not None and device.site_id == spec.site_id and device.location:
        spec.location = dict(device.location)
        spec.apartment = spec.apartment or device.location.get("apartment")
    return spec


def clear_keys_only(rules: RuleSet, fields: dict[str, Any], subject: str) -> list[str] | None:
    """The open keys of the conditions an event clears, when clearing is all :func:`handle_event` could do
    with it (no work order to open or attach to, no timer to start or cancel); None otherwise. A gate
    that opens clears "gate fault": almost always there is none open, which one read can tell without
    the write transaction :func:`handle_event` needs."""
    keys: list[str] = []
    kind = fields.get("type")
    for rule in rules.rules:
        if rule.clears(fields):
            if rule.kind == "offline":
                return None  # cancels its timers
            keys.append(store.open_key_of(rule.id, subject, rule.condition_key(fields)))
        if rule.kind == "offline":
            if rule.target == "device" and kind == "device.offline" and matches(rule.where, fields):
                return None
            continue
        if rule.kind in ("event", "repeated") and kind in rule.on and matches(rule.where, fields):
            return None
    return keys


async def handle_event(
    session: AsyncSession, rules: RuleSet, *, site_id: str, gateway_id: str, event: Event, now: datetime
) -> list[tuple[WorkOrder, bool]]:
    """Apply one event: clear, open or attach. Returns the work orders it touched (and if new)."""
    fields = event_fields(site_id, gateway_id, event)
    touched: list[tuple[WorkOrder, bool]] = []
    levels = rules.escalation
    for rule in rules.rules:
        if rule.clears(fields):
            key = rule.condition_key(fields)
            for wo in await store.mark_cleared(
                session,
                rule_id=rule.id,
                subject=event.device_id,
                condition_key=key,
                by=event.type,
                at=event.ts,
                now=now,
            ):
                touched.append((wo, False))
            if rule.kind == "offline":
                await session.execute(
                    update(Timer)
                    .where(
                        Timer.kind == "offline",
                        Timer.rule_id == rule.id,
                        Timer.device_id == event.device_id,
                        Timer.done_at.is_(None),
                    )
                    .values(done_at=now, outcome="cancelled")
                )
        if rule.kind == "offline":
            if rule.target == "device" and event.type == "device.offline" and matches(rule.where, fields):
                await _start_offline_timer(session, rule, site_id, gateway_id, event)
            continue
        if rule.kind not in ("event", "repeated") or event.type not in rule.on:
            continue
        if not matches(rule.where, fields):
            continue
        spec = await _with_device_location(session, spec_for(rules, rule, fields, at=event.ts, event=event))
        if (
            rule.kind == "repeated"
            and spec.open_key
            and await store.find_open(session, spec.open_key) is None
        ):
            assert rule.within is not None and rule.count is not None
            recent = await session.scalar(
                select(func.count())
                .select_from(EventRow)
                .where(
                    EventRow.device_id == event.device_id,
                    EventRow.type.in_(rule.on),
                    EventRow.ts > event.ts - rule.within,
                    EventRow.ts <= event.ts,
                )
            )
            if int(recent or 0) < rule.count:
                continue
            spec.data = {**spec.data, "count": int(recent or 0), "within_s": rule.within.total_seconds()}
        touched.append(await store.open_or_attach(session, spec, now, levels))
    return touched


async def _start_offline_timer(
    session: AsyncSession, rule: Rule, site_id: str, gateway_id: str, event: Event
) -> None:
    assert rule.after is not None
    pending = await session.scalar(
        select(Timer.id).where(
            Timer.kind == "offline",
            Timer.rule_id == rule.id,
            Timer.device_id == event.device_id,
            Timer.done_at.is_(None),
        )
    )
    if pending is not None:
        return
    session.add(
        Timer(
            kind="offline",
            rule_id=rule.id,
            device_id=event.device_id,
            due_at=event.ts + rule.after,
            data={
                "site_id": site_id,
                "gateway_id": gateway_id,
                "since": event.ts.isoformat(),
                "reason": event.data.get("reason"),
                "location": event.location.model_dump(exclude_none=True) if event.location else {},
            },
        )
    )
