"""Versioned wire messages. Every message carries ``v``; a receiver rejects versions it does not know.

Times are timezone-aware UTC datetimes, serialised as ISO 8601.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler, WithJsonSchema
from pydantic_core import CoreSchema, core_schema

PROTOCOL_VERSION: Final = 1  # Final, so typed Literal[1]: the default of every message's ``v: Literal[1]``

# Hard limits a receiver enforces before trusting anything else in a message.
MAX_BATCH_EVENTS = 5000
MAX_EVENT_TYPE_LEN = 64
# An event's data and location, as JSON: the gateway refuses a larger event when it is recorded, so a
# batch of one event always fits the smallest batch limit (BufferConfig.max_batch_bytes).
MAX_EVENT_BYTES = 64 * 1024
# The cloud's default limit on one uplink message (CloudSettings.max_payload_bytes).
MAX_MESSAGE_BYTES = 1024 * 1024


class _NativeCheck:
    """Puts a check into pydantic-core's own (Rust) schema, with our message instead of its generic one.

    An ``AfterValidator`` calls back into Python for every value, and every event carries ids.
    """

    def __init__(self, error_type: str, message: str, **constraints: Any) -> None:
        self.error_type = error_type
        self.message = message
        self.constraints = constraints

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        inner = handler(source)
        # pydantic-core shows mypy its schemas as a read-only Mapping (the TypedDict union is too slow for
        # it); at runtime this is the dict the handler built, and the constraints go into it.
        cast("dict[str, Any]", inner).update(self.constraints)
        return core_schema.custom_error_schema(
            inner, custom_error_type=self.error_type, custom_error_message=self.message
        )


# The same rule as protocol.topics.check_segment (an id becomes a topic segment), checked in Rust; its
# "$" is the very end of the string, so unlike Python's re a trailing newline is refused too. The JSON
# Schema stays a plain string, as published in docs/protocol.md.
SEGMENT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Ident = Annotated[
    str,
    _NativeCheck(
        "invalid_id",
        "id must be 1-64 characters of letters, digits, '_', '.' or '-'",
        pattern=SEGMENT_PATTERN,
    ),
    WithJsonSchema({"type": "string"}),
]
EventType = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_.]*$", max_length=MAX_EVENT_TYPE_LEN)
]


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from None
    return value


# An IANA time zone this machine's zoneinfo knows (a typo like "Asia/Shangai" is refused, not UTC).
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_known_zone)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    tz = value.tzinfo
    if tz is UTC:  # what every time the gateway stamps carries: nothing to convert
        return value
    if tz is None:
        raise ValueError("timestamp must carry a time zone (use UTC, e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(UTC)


# Stays a Python AfterValidator, on purpose: pydantic's native aware check would leave each parsed time
# with its own pydantic TzInfo object (garbage-collector-tracked, two per event), which in ingest cost more
# collector time than the call saves; converting gives every consumer the one datetime.UTC instead.
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class WireModel(BaseModel):
    """Base of every message: strict about unknown fields so typos and forgeries fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, payload: bytes | str) -> WireModel:
        return cls.model_validate_json(payload)


class Severity(StrEnum):
    """How much an event matters; the edge buffer evicts ``telemetry`` first and never ``safety``."""

    SAFETY = "safety"
    ACCESS = "access"
    STATE = "state"
    TELEMETRY = "telemetry"


_SAFETY_TYPES = {"door.forced_open", "door.held_open", "door.relock_failed", "gate.obstructed"}
_TELEMETRY_PREFIXES = ("meter.reading", "sensor.reading", "gateway.health")


def event_severity(event_type: str) -> Severity:
    """Classify an event type; the table is the single place eviction and rules look this up."""
    if event_type.startswith("fire.") or event_type in _SAFETY_TYPES:
        return Severity.SAFETY
    if event_type.startswith(("access.", "gate.", "door.", "intercom.", "command.")):
        return Severity.ACCESS
    if event_type.startswith(_TELEMETRY_PREFIXES):
        return Severity.TELEMETRY
    return Severity.STATE


class Location(WireModel):
    building: str | None = None
    unit: str | None = None
    apartment: str | None = None
    lane: str | None = None
    area: str | None = None


class Event(WireModel):
    """Something a device did, stamped by the gateway that saw it."""

    id: str = Field(min_length=26, max_length=26, description="ULID, globally unique, time-ordered")
    seq: int = Field(ge=0, description="The gateway's monotonic sequence number")
    device_id: Ident
    type: EventType
    ts: AwareDatetime = Field(description="When the device says it happened")
    received_at: AwareDatetime = Field(description="When the gateway received it")
    location: Location | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class EventBatch(WireModel):
    v: Literal[1] = PROTOCOL_VERSION
    batch_id: str = Field(min_length=1, max_length=64)
    site_id: Ident
    gateway_id: Ident
    sent_at: AwareDatetime
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class BatchAck(WireModel):
    """Sent by the cloud only after the batch is committed to its store."""

    v: Literal[1] = PROTOCOL_VERSION
    batch_id: str
    stored: int = Field(ge=0, description="Events newly stored")
    duplicates: int = Field(ge=0, description="Events the store already had (redelivery)")
    rejected: int = 0
    error: str | None = None


class Command(WireModel):
    """An operator's request for a device, carried down to one gateway. Never published retained."""

    v: Literal[1] = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=64)
    site_id: Ident
    gateway_id: Ident
    device_id: Ident
    action: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    issued_by: str = Field(default="", max_length=128)
    signature: str | None = Field(default=None, description="Ed25519 over signing_bytes(), base64")

    def signing_bytes(self) -> bytes:
        """The canonical bytes a signature covers: everything but the signature itself."""
        return self.model_copy(update={"signature": None}).model_dump_json(exclude={"signature"}).encode()

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at


class CommandStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.EXPIRED, CommandStatus.REJECTED}


class CommandResult(WireModel):
    v: Literal[1] = PROTOCOL_VERSION
    command_id: str = Field(min_length=1, max_length=64)
    gateway_id: Ident
    device_id: Ident
    status: CommandStatus
    reason: str | None = Field(default=None, max_length=500)
    at: AwareDatetime
    state: dict[str, Any] = Field(default_factory=dict, description="Device state after the action")
    accepted_at: AwareDatetime | None = Field(
        default=None,
        description="On a final result only: when the gateway took the command on, if it sent no"
        " separate 'accepted' (the action finished quickly); the cloud records the acceptance from it",
    )


class DeviceInfo(WireModel):
    id: Ident
    kind: str
    model: str
    name: str | None = Field(
        default=None, max_length=200, description="What people call it (site config `name`), for consoles"
    )
    location: Location | None = None


class GatewayStatus(WireModel):
    """Retained on the status topic; the Last Will publishes ``online=false``."""

    v: Literal[1] = PROTOCOL_VERSION
    site_id: Ident
    gateway_id: Ident
    online: bool
    at: AwareDatetime
    site_name: str | None = None
    timezone: TimeZoneName | None = Field(
        default=None, description="The estate's time zone (site config), for its night rules and schedules"
    )
    software: str | None = None
    devices: list[DeviceInfo] = Field(default_factory=list)
    health: dict[str, Any] = Field(default_factory=dict)
