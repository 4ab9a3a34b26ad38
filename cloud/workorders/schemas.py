"""API schemas (pydantic) for work orders, kept apart from the tables in :mod:`cloud.workorders.tables`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.workorders.lifecycle import Status
from cloud.workorders.rules import Priority


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ManualWorkOrderIn(_In):
    """A resident's request taken by phone (or at the desk)."""

    category: Literal["repair", "enquiry", "complaint"]
    complaint_type: Literal["noise", "facilities", "neighbour"] | None = Field(
        default=None, description="Complaints only: noise 3 days, facilities 5 days, neighbour 7 days"
    )
    site_id: str = Field(min_length=1, max_length=64)
    apartment: str | None = Field(default=None, max_length=64, examples=["3-2-1502"])
    building: str | None = Field(default=None, max_length=64)
    description: str = Field(min_length=1, max_length=4000)
    title: str | None = Field(default=None, max_length=200)
    priority: Priority | None = Field(default=None, description="Default: by category")
    contact: str | None = Field(default=None, max_length=200, description="Caller's name / phone")
    actor: str = Field(default="operator", min_length=1, max_length=128)

    @model_validator(mode="after")
    def _check(self) -> ManualWorkOrderIn:
        if self.category == "complaint" and self.complaint_type is None:
            raise ValueError("a complaint needs complaint_type: noise, facilities or neighbour")
        if self.category != "complaint" and self.complaint_type is not None:
            raise ValueError("complaint_type applies to complaints only")
        if self.category == "repair" and not self.apartment and not self.building:
            raise ValueError("a repair needs the apartment (or building) it is for")
        return self

    @property
    def full_category(self) -> str:
        return f"complaint.{self.complaint_type}" if self.category == "complaint" else self.category


class FollowUpIn(_In):
    reached: bool = Field(description="Did the follow-up call or visit reach the resident")
    satisfaction: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=2000)


class TransitionIn(_In):
    to: Status
    actor: str = Field(default="operator", min_length=1, max_length=128)
    assignee: str | None = Field(default=None, max_length=128)
    note: str | None = Field(default=None, max_length=2000)
    follow_up: FollowUpIn | None = None


class WorkOrderOut(_Out):
    id: int
    source: str
    rule_id: str | None
    condition_key: str
    site_id: str | None
    gateway_id: str | None
    device_id: str | None
    apartment: str | None
    location: dict[str, Any] | None
    data: dict[str, Any]
    category: str
    priority: str
    teams: list[str]
    title: str
    description: str | None
    status: str
    assignee: str | None
    created_by: str
    occurrences: int
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None
    cleared_by: str | None
    response_due: datetime
    resolution_due: datetime
    escalation_level: int
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    follow_up_reached: bool | None
    follow_up_satisfaction: int | None
    follow_up_comment: str | None
    follow_up_at: datetime | None
    response_left_s: float | None = Field(default=None, description="Until the response deadline; <0: late")
    resolution_left_s: float | None = Field(default=None, description="Until the resolution deadline")
    overdue: bool = False


class OccurrenceOut(_Out):
    event_id: str | None
    event_type: str | None
    at: datetime
    data: dict[str, Any]


class TransitionOut(_Out):
    from_status: str | None
    to_status: str
    actor: str
    note: str | None
    at: datetime


class EscalationOut(_Out):
    deadline: str
    level: int
    notify: str
    due_at: datetime
    at: datetime


class WorkOrderDetail(WorkOrderOut):
    recent_occurrences: list[OccurrenceOut] = Field(default_factory=list, description="Newest first, ≤ 100")
    history: list[TransitionOut] = Field(default_factory=list)
    escalations: list[EscalationOut] = Field(default_factory=list)


class WorkOrderPage(BaseModel):
    items: list[WorkOrderOut]
    next_cursor: str | None = None


class Durations(BaseModel):
    count: int = Field(description="Work orders measured")
    median_s: float | None
    p90_s: float | None = Field(description="Nearest-rank 90th percentile")


class WorkOrderReport(BaseModel):
    site: str | None
    from_: datetime | None = Field(alias="from", serialization_alias="from")
    to: datetime | None
    total: int
    by_category: dict[str, int]
    by_priority: dict[str, int]
    by_status: dict[str, int]
    response: Durations = Field(description="Created to acknowledged")
    resolution: Durations = Field(description="Created to resolved")
    response_hit_rate: float | None = Field(description="Acknowledged in time / response decided")
    resolution_hit_rate: float | None = Field(description="Resolved in time / resolution decided")
    closed: int
    follow_up_rate: float | None = Field(description="Closed with the resident reached / closed")
    mean_satisfaction: float | None

    model_config = ConfigDict(populate_by_name=True)
