"""The work order lifecycle: which status may follow which, and what each transition records.

::

    open → acknowledged → assigned → in_progress → resolved → closed
      └──────────┴────────────┴───────────┴──→ cancelled        (assigned/in_progress may re-assign)

Errors (rendered by cloud/errors.py as ``{"error": {"code", "message"}}``)::

    CloudError
     ├── InvalidTransition   409 invalid_transition   names the allowed next statuses
     └── TransitionRejected  422 transition_incomplete e.g. closing without the follow-up
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.errors import CloudError
from cloud.workorders import store
from cloud.workorders.tables import Transition, WorkOrder


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"


ALLOWED: dict[Status, tuple[Status, ...]] = {
    Status.OPEN: (Status.ACKNOWLEDGED, Status.CANCELLED),
    Status.ACKNOWLEDGED: (Status.ASSIGNED, Status.CANCELLED),
    Status.ASSIGNED: (Status.IN_PROGRESS, Status.ASSIGNED, Status.CANCELLED),
    Status.IN_PROGRESS: (Status.RESOLVED, Status.ASSIGNED, Status.CANCELLED),
    Status.RESOLVED: (Status.CLOSED,),
    Status.CLOSED: (),
    Status.CANCELLED: (),
}


class InvalidTransition(CloudError):
    status = 409
    code = "invalid_transition"


class TransitionRejected(CloudError):
    status = 422
    code = "transition_incomplete"


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The follow-up visit (回访) recorded when a work order is closed."""

    reached: bool
    satisfaction: int | None = None
    comment: str | None = None


def check(work_order_id: int, current: str, to: Status) -> None:
    allowed = ALLOWED[Status(current)]
    if to not in allowed:
        names = ", ".join(s.value for s in allowed) or "none (it is final)"
        raise InvalidTransition(
            f"work order {work_order_id} is {current}: cannot move to {to.value}; allowed: {names}"
        )


async def apply(
    session: AsyncSession,
    wo: WorkOrder,
    to: Status,
    actor: str,
    now: datetime,
    *,
    assignee: str | None = None,
    note: str | None = None,
    follow_up: FollowUp | None = None,
) -> None:
    """Move ``wo`` (locked by the caller) to ``to``, record it, and stop the timers it settles."""
    check(wo.id, wo.status, to)
    if to is Status.ASSIGNED and not (assignee or "").strip():
        raise TransitionRejected("assigning needs an assignee")
    if to is Status.CLOSED and follow_up is None:
        raise TransitionRejected("closing needs the follow-up (回访): reached, satisfaction 1-5, comment")
    if follow_up is not None and follow_up.reached and follow_up.satisfaction is None:
        raise TransitionRejected("a follow-up that reached the resident needs a satisfaction score 1-5")
    before = wo.status
    wo.status, wo.updated_at = to.value, now
    if to is Status.ACKNOWLEDGED:
        wo.acknowledged_at = now
        await store.cancel_timers(session, wo.id, now, "response")
    elif to is Status.ASSIGNED:
        wo.assignee = assignee
    elif to is Status.RESOLVED:
        wo.resolved_at = now
        await store.cancel_timers(session, wo.id, now, "resolution")
    if to in (Status.CLOSED, Status.CANCELLED):
        wo.open_key = None  # the condition may open a new work order from now on
        wo.closed_at = now
        await store.cancel_timers(session, wo.id, now)
    if follow_up is not None and to is Status.CLOSED:
        wo.follow_up_reached = follow_up.reached
        wo.follow_up_satisfaction = follow_up.satisfaction
        wo.follow_up_comment = follow_up.comment
        wo.follow_up_at = now
    detail = note
    if to is Status.ASSIGNED:
        detail = f"assigned to {assignee}" + (f"; {note}" if note else "")
    session.add(
        Transition(
            work_order_id=wo.id, from_status=before, to_status=to.value, actor=actor, note=detail, at=now
        )
    )
