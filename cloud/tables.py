"""SQLAlchemy tables (``Mapped``). API schemas live in :mod:`cloud.schemas`; never return these directly.

One code path for SQLite and PostgreSQL: generic types only, UTC datetimes through :class:`UTCDateTime`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (naive text) and PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64), doc="IANA zone its site config names")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Gateway(Base):
    __tablename__ = "gateways"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None]
    status_at: Mapped[datetime | None]
    software: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    clock_skew_s: Mapped[float | None] = mapped_column(Float)
    clock_skewed: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def device_ids_taken(self) -> list[str]:
        """Device ids its last status named that another site holds (see ``cloud.store.apply_status``)."""
        return list((self.status or {}).get("device_ids_taken", []))


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    gateway_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="unknown")
    model: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str | None] = mapped_column(String(200), doc="What people call it, from the site config")
    location: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    online: Mapped[bool | None] = mapped_column(Boolean, doc="None: unknown (its gateway is offline)")
    updated_at: Mapped[datetime]


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[str] = mapped_column(String(26), primary_key=True)  # the ULID; unique by construction
    site_id: Mapped[str] = mapped_column(String(64))
    gateway_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    device_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime]
    received_at: Mapped[datetime]
    stored_at: Mapped[datetime]
    location: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_events_device_seq", "device_id", "seq"),
        Index("ix_events_type_ts", "type", "ts"),
        Index("ix_events_gateway_seq", "gateway_id", "seq"),
        Index("ix_events_site_id", "site_id", "id"),
    )


class RejectedEvent(Base):
    """An event the cloud could not accept, from a batch whose other events it stored: kept as received.
    The batch was acknowledged, so the gateway has forgotten the event and this row is its only copy (a
    batch refused whole would have been resent for ever, its good events with it)."""

    __tablename__ = "rejected_events"
    # sha256 of the gateway id and the event's JSON: a resent batch does not store the same one twice.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    gateway_id: Mapped[str] = mapped_column(String(64), index=True)
    batch_id: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text, doc="The event's JSON as received")
    received_at: Mapped[datetime]


class CommandRow(Base):
    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    gateway_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, doc="Why the operator asked")
    result_reason: Mapped[str | None] = mapped_column(Text, doc="What the gateway said")
    result_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    issued_by: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_commands_status_expires", "status", "expires_at"),
        # The command log (GET /commands), newest first: by site (a console), by device, by operator,
        # and all of them (an administrator). Migration 0010.
        Index("ix_commands_site_issued", "site_id", "issued_at", "id"),
        Index("ix_commands_device_issued", "device_id", "issued_at", "id"),
        Index("ix_commands_issued_by", "issued_by", "issued_at", "id"),
        Index("ix_commands_issued", "issued_at", "id"),
    )


class CommandAudit(Base):
    """Append-only: one row per thing that happened to a command."""

    __tablename__ = "command_audit"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(String(64), index=True)
    operator: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class Reading(Base):
    """One numeric value of one device point at one time: compact history for charts and buckets."""

    __tablename__ = "readings"
    # On SQLite clustered on the key (migration 0006): a rowid table kept every row twice.
    __table_args__ = ({"sqlite_with_rowid": False},)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    point: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True, doc="Unix epoch milliseconds, UTC")
    value: Mapped[float] = mapped_column(Float)
