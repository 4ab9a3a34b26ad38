"""Work order store operations inside the caller's session and transaction (the caller commits).

Multi-instance safety, one code path for both databases:

* one open work order per condition: the unique ``open_key`` (NULL once closed or cancelled); a
  concurrent insert that loses the race attaches to the winner's row instead;
* a due timer fires once: :func:`claim` takes rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; on SQLite every transaction begins IMMEDIATE (cloud/db.py), so one writer at a time claims
  with ``UPDATE ... WHERE claimed_by IS NULL``; either way the claim, the work and ``done_at`` commit
  together, and a crash rolls the claim back;
* a planned period runs once: ``INSERT ... ON CONFLICT DO NOTHING`` on (schedule, site, period).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.workorders.rules import Deadlines, EscalationLevel, Priority
from cloud.workorders.tables import Occurrence, PlannedRun, Timer, Transition, WebhookDelivery, WorkOrder

T = TypeVar("T", Timer, WebhookDelivery)
FINAL = ("closed", "cancelled")


def is_postgres(session: AsyncSession) -> bool:
    bind = session.get_bind()
    return bind.dialect.name == "postgresql"


def insert(session: AsyncSession, table: Any) -> Any:
    return (postgresql.insert if is_postgres(session) else sqlite.insert)(table)


def locked(session: AsyncSession, query: Select[Any]) -> Select[Any]:
    """Row lock on PostgreSQL; SQLite's transaction already holds the database write lock."""
    return query.with_for_update() if is_postgres(session) else query


@dataclass(slots=True)
class NewWorkOrder:
    """What to open: from a rule match, a phone call or a schedule."""

    source: str
    category: str
    priority: Priority
    teams: list[str]
    title: str
    deadlines: Deadlines
    created_by: str
    rule_id: str | None = None
    condition_key: str = ""
    dedupe: bool = True
    site_id: str | None = None
    gateway_id: str | None = None
    device_id: str | None = None
    apartment: str | None = None
    location: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    seen_at: datetime | None = None
    event_id: str | None = None
    event_type: str | None = None

    @property
    def open_key(self) -> str | None:
        if self.source != "rule" or not self.dedupe:
            return None
        return open_key_of(self.rule_id, self.device_id or self.gateway_id or "", self.condition_key)


def open_key_of(rule_id: str, subject: str, condition_key: str) -> str:
    """The ``open_key`` of a rule's condition on a device (or gateway), as :class:`NewWorkOrder` makes it."""
    return f"{rule_id}|{subject}|{condition_key}"[:400]


def any_uncleared(conn: Connection, open_keys: list[str]) -> bool:
    """Whether a work order is open, and not yet marked cleared, for any of ``open_keys``."""
    found = conn.execute(
        select(WorkOrder.id).where(WorkOrder.open_key.in_(open_keys), WorkOrder.cleared_at.is_(None)).limit(1)
    ).first()
    return found is not None


async def find_open(session: AsyncSession, open_key: str) -> WorkOrder | None:
    row: WorkOrder | None = await session.scalar(
        locked(session, select(WorkOrder).where(WorkOrder.open_key == open_key))
    )
    return row


def _attach(session: AsyncSession, wo: WorkOrder, spec: NewWorkOrder, now: datetime) -> None:
    seen = spec.seen_at or now
    wo.occurrences += 1
    wo.last_seen = max(wo.last_seen, seen)
    wo.first_seen = min(wo.first_seen, seen)
    wo.updated_at = now
    if wo.cleared_at is not None and seen >= wo.cleared_at:
        wo.cleared_at, wo.cleared_by = None, None  # the condition is back
    session.add(
        Occurrence(
            work_order_id=wo.id, event_id=spec.event_id, event_type=spec.event_type, at=seen, data=spec.data
        )
    )


async def open_or_attach(
    session: AsyncSession,
    spec: NewWorkOrder,
    now: datetime,
    levels: list[EscalationLevel],
    *,
    attach: bool = True,
) -> tuple[WorkOrder, bool]:
    """Open a work order, or attach ``spec`` as an occurrence of the open one for the same condition.
    Returns ``(work_order, created)``. With ``attach=False`` an existing one is returned untouched."""
    key = spec.open_key
    if key is not None:
        wo = await find_open(session, key)
        if wo is not None:
            if attach:
                _attach(session, wo, spec, now)
            return wo, False
    seen = spec.seen_at or now
    wo = WorkOrder(
        source=spec.source,
        rule_id=spec.rule_id,
        open_key=key,
        condition_key=spec.condition_key,
        site_id=spec.site_id,
        gateway_id=spec.gateway_id,
        device_id=spec.device_id,
        apartment=spec.apartment,
        location=spec.location or None,
        data=spec.data,
        category=spec.category,
        priority=spec.priority.value,
        teams=list(spec.teams),
        title=spec.title[:200],
        description=spec.description,
        status="open",
        created_by=spec.created_by,
        occurrences=1,
        first_seen=seen,
        last_seen=seen,
        response_due=now + spec.deadlines.response,
        resolution_due=now + spec.deadlines.resolution,
        escalation_level=0,
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(wo)
            await session.flush()
    except IntegrityError:
        # Another instance opened the same condition a moment ago: attach to theirs.
        assert key is not None
        existing = await find_open(session, key)
        if existing is None:
            raise
        if attach:
            _attach(session, existing, spec, now)
        return existing, False
    session.add(
        Occurrence(
            work_order_id=wo.id, event_id=spec.event_id, event_type=spec.event_type, at=seen, data=spec.data
        )
    )
    session.add(
        Transition(work_order_id=wo.id, from_status=None, to_status="open", actor=spec.created_by, at=now)
    )
    for deadline, due in (("response", wo.response_due), ("resolution", wo.resolution_due)):
        for number, level in enumerate(levels, start=1):
            session.add(
                Timer(
                    kind="escalation",
                    work_order_id=wo.id,
                    deadline=deadline,
                    level=number,
                    due_at=due + level.after,
                    data={},
                )
            )
    return wo, True


async def mark_cleared(
    session: AsyncSession,
    *,
    rule_id: str,
    subject: str,
    condition_key: str,
    by: str,
    at: datetime,
    now: datetime,
) -> list[WorkOrder]:
    """The condition is over (a restore event): note it on the open work order; people close it."""
    wo = await find_open(session, open_key_of(rule_id, subject, condition_key))
    if wo is None or wo.cleared_at is not None or at < wo.last_seen:
        return []
    wo.cleared_at, wo.cleared_by, wo.updated_at = at, by, now
    return [wo]


async def cancel_timers(
    session: AsyncSession, work_order_id: int, now: datetime, deadline: str | None = None
) -> None:
    query = update(Timer).where(Timer.work_order_id == work_order_id, Timer.done_at.is_(None))
    if deadline is not None:
        query = query.where(Timer.deadline == deadline)
    await session.execute(query.values(done_at=now, outcome="cancelled"))


async def claim(session: AsyncSession, now: datetime, instance: str, limit: int = 100) -> list[Timer]:
    """Due timers this instance (alone) now owns, until the transaction ends."""
    due = (Timer.done_at.is_(None), Timer.due_at <= now)
    if is_postgres(session):
        ids = list(
            (
                await session.execute(
                    select(Timer.id)
                    .where(*due)
                    .order_by(Timer.due_at, Timer.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if ids:
            await session.execute(update(Timer).where(Timer.id.in_(ids)).values(claimed_by=instance))
    else:
        pick = select(Timer.id).where(*due, Timer.claimed_by.is_(None)).order_by(Timer.due_at).limit(limit)
        ids = list(
            (
                await session.execute(
                    update(Timer)
                    .where(Timer.id.in_(pick.scalar_subquery()), Timer.claimed_by.is_(None))
                    .values(claimed_by=instance)
                    .returning(Timer.id)
                )
            ).scalars()
        )
    if not ids:
        return []
    rows = await session.execute(select(Timer).where(Timer.id.in_(ids)).order_by(Timer.due_at, Timer.id))
    return list(rows.scalars())


async def claim_period(
    session: AsyncSession, *, schedule_id: str, site_id: str, period: str, instance: str, now: datetime
) -> bool:
    """True for exactly one caller per (schedule, site, period), whichever instance it is."""
    stmt = (
        insert(session, PlannedRun)
        .values(schedule_id=schedule_id, site_id=site_id, period=period, instance=instance, at=now)
        .on_conflict_do_nothing(index_elements=["schedule_id", "site_id", "period"])
        .returning(PlannedRun.schedule_id)
    )
    return (await session.execute(stmt)).scalar() is not None


async def lease_deliveries(
    session: AsyncSession, now: datetime, instance: str, lease: timedelta, limit: int = 20
) -> list[WebhookDelivery]:
    """Webhook deliveries due now, leased to this instance while it sends them (outside any transaction)."""
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.delivered_at.is_(None),
            WebhookDelivery.gave_up_at.is_(None),
            WebhookDelivery.next_attempt_at <= now,
            (WebhookDelivery.lease_until.is_(None)) | (WebhookDelivery.lease_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    ids = list((await session.execute(query)).scalars())
    if not ids:
        return []
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .values(lease_until=now + lease, leased_by=instance)
    )
    rows = await session.execute(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    return list(rows.scalars())
