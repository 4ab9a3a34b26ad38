"""API schemas (pydantic), kept apart from the ``Mapped`` tables in :mod:`cloud.tables`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.models import CommandStatus


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class CommandRequest(BaseModel):
    """The operator's request. Who issued it is the authenticated caller, never a field here; an
    unknown field (``issued_by`` included) is refused with 422 like in every other request body."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=32, examples=["open"])
    args: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(default="", max_length=500, examples=["visitor at gate"])
    expires_in_s: float | None = Field(default=None, gt=0, le=3600, description="Default: command_expiry_s")


class CommandOut(_Out):
    id: str
    device_id: str
    gateway_id: str
    site_id: str
    action: str
    args: dict[str, Any]
    status: str
    final: bool = False
    reason: str | None
    result_reason: str | None
    result_state: dict[str, Any] | None
    issued_by: str
    issued_at: datetime
    expires_at: datetime
    updated_at: datetime


class CommandPage(BaseModel):
    items: list[CommandOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class CommandAuditOut(_Out):
    command_id: str
    operator: str
    device_id: str
    action: str
    status: str
    reason: str | None
    at: datetime


class EventOut(_Out):
    id: str
    site_id: str
    gateway_id: str
    seq: int
    device_id: str
    type: str
    severity: str
    ts: datetime
    received_at: datetime
    stored_at: datetime
    location: dict[str, Any] | None
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class RejectedEventOut(_Out):
    """An event the cloud's schema refused, from a batch whose other events it stored: as received."""

    key: str
    site_id: str
    gateway_id: str
    batch_id: str
    error: str = Field(
        description="Where and why validation failed, e.g. 'type: String should match pattern ...'"
    )
    payload: str = Field(description="The event's JSON exactly as the gateway sent it")
    received_at: datetime


class RejectedEventPage(BaseModel):
    items: list[RejectedEventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class DeviceOut(_Out):
    id: str
    site_id: str
    gateway_id: str
    kind: str
    model: str
    name: str | None = Field(description="What people call it (the site config's name), if given")
    location: dict[str, Any] | None
    state: dict[str, Any]
    online: bool | None = Field(description="null: unknown, its gateway is offline")
    updated_at: datetime


class GatewayOut(_Out):
    id: str
    site_id: str
    online: bool
    last_seen: datetime | None
    status_at: datetime | None
    software: str | None
    health: dict[str, Any]
    clock_skew_s: float | None
    clock_skewed: bool
    device_ids_taken: list[str] = Field(
        description="Device ids its site config names that another site already has: their events are "
        "stored but update no device until the config renames them (which ids only, never whose)"
    )


class SiteOut(_Out):
    id: str
    name: str | None
    timezone: str | None = Field(description="IANA zone its site config names; consoles show its times in it")
    created_at: datetime
    updated_at: datetime
    devices: dict[str, int] = Field(
        default_factory=dict, description='How many devices of each kind it has, e.g. {"barrier_gate": 2}'
    )


class SitePage(BaseModel):
    items: list[SiteOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class GatewayPage(BaseModel):
    items: list[GatewayOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class Bucket(BaseModel):
    start: datetime
    count: int
    min: float
    max: float
    avg: float


class ReadingSeries(BaseModel):
    point: str
    buckets: list[Bucket]


class ReadingsOut(BaseModel):
    device_id: str
    bucket_s: int
    timezone: str = Field(description="The IANA zone whose wall clock the buckets follow")
    series: list[ReadingSeries]


def command_out(row: object) -> CommandOut:
    """A command row as the API shows it."""
    out = CommandOut.model_validate(row)
    return out.model_copy(update={"final": CommandStatus(out.status).final})


def command_json(row: object) -> dict[str, Any]:
    """:func:`command_out` as JSON (also what SSE and long-polls carry)."""
    return command_out(row).model_dump(mode="json")
