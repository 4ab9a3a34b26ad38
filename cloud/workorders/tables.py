"""Work order tables (``Mapped``), on the cloud's :class:`cloud.tables.Base`; migration 0002_workorders.

API schemas live in :mod:`cloud.workorders.schemas`; never return these rows directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud.tables import Base, BigId


class WorkOrder(Base):
    __tablename__ = "work_orders"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16), doc="rule | manual | schedule")
    rule_id: Mapped[str | None] = mapped_column(String(64))
    # Set while the work order is open (not closed or cancelled), NULL after: a unique index keeps one
    # open work order per device and condition, whichever cloud instance saw the event.
    open_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    condition_key: Mapped[str] = mapped_column(String(400), default="")
    site_id: Mapped[str | None] = mapped_column(String(64))
    gateway_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    apartment: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    category: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16))
    teams: Mapped[list[str]] = mapped_column(JSON, default=list)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(128))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    cleared_by: Mapped[str | None] = mapped_column(String(64), doc="The restore event type")
    response_due: Mapped[datetime]
    resolution_due: Mapped[datetime]
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    follow_up_reached: Mapped[bool | None] = mapped_column(Boolean)
    follow_up_satisfaction: Mapped[int | None] = mapped_column(Integer)
    follow_up_comment: Mapped[str | None] = mapped_column(Text)
    follow_up_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_work_orders_site_created", "site_id", "created_at"),
        Index("ix_work_orders_status", "status", "id"),
        Index("ix_work_orders_rule_device", "rule_id", "device_id"),
    )


class Occurrence(Base):
    """One event (or check) that opened or repeated a work order's condition."""

    __tablename__ = "work_order_occurrences"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str | None] = mapped_column(String(26))
    event_type: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Transition(Base):
    """Append-only: every change of status, with who made it."""

    __tablename__ = "work_order_history"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class Escalation(Base):
    __tablename__ = "work_order_escalations"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id", ondelete="CASCADE"), index=True)
    deadline: Mapped[str] = mapped_column(String(16), doc="response | resolution")
    level: Mapped[int] = mapped_column(Integer)
    notify: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column(doc="When the deadline was missed")
    at: Mapped[datetime]
    instance: Mapped[str] = mapped_column(String(64), doc="The cloud instance that fired it")


class Timer(Base):
    """A due time that survives restarts; claimed by exactly one instance when due."""

    __tablename__ = "work_order_timers"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), doc="escalation | offline")
    work_order_id: Mapped[int | None] = mapped_column(BigInteger)
    deadline: Mapped[str | None] = mapped_column(String(16))
    level: Mapped[int | None] = mapped_column(Integer)
    rule_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    due_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    done_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16), doc="fired | skipped | cancelled")

    __table_args__ = (Index("ix_work_order_timers_due", "done_at", "due_at"),)


class WebhookDelivery(Base):
    """Outbox: a webhook POST still to make (or made). Leased while one instance sends it."""

    __tablename__ = "work_order_webhooks"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(BigInteger, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(64))
    delivered_at: Mapped[datetime | None]
    gave_up_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    __table_args__ = (Index("ix_work_order_webhooks_due", "delivered_at", "next_attempt_at"),)


class PlannedRun(Base):
    """One row per schedule (or nightly check), site and period: the unique key makes it run once."""

    __tablename__ = "work_order_runs"
    schedule_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(32), primary_key=True)
    work_order_id: Mapped[int | None] = mapped_column(BigInteger)
    instance: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
