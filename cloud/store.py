"""Store operations shared by ingest, commands and the API. Each function works inside the caller's
session and transaction; the caller commits. One code path for SQLite and PostgreSQL: both take
``INSERT ... ON CONFLICT`` through their SQLAlchemy dialect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.state import merge_state, numeric_points, state_updates
from cloud.tables import CommandAudit, CommandRow, Device, EventRow, Gateway, Reading, Site
from protocol.models import CommandResult, CommandStatus, Event, EventBatch, GatewayStatus, event_severity

_CHUNK = 500  # rows per multi-row INSERT: 500 x 12 columns stays under SQLite's variable limit
_RANK = {CommandStatus.PENDING: 0, CommandStatus.SENT: 1, CommandStatus.ACCEPTED: 2}
NON_FINAL = [s.value for s in CommandStatus if not s.final]


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def rank(status: CommandStatus) -> int:
    return 3 if status.final else _RANK[status]


@dataclass(slots=True)
class BatchOutcome:
    stored: int
    duplicates: int
    new_events: list[Event] = field(default_factory=list)
    clock_skew_s: float = 0.0


async def touch_gateway(
    session: AsyncSession, site_id: str, gateway_id: str, now: datetime, **values: Any
) -> None:
    """Record that a gateway spoke: create its site and row if new, mark it online, bump last_seen."""
    await session.execute(
        _insert(session, Site)
        .values(id=site_id, name=None, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = {"online": True, "last_seen": now, **values}
    await session.execute(
        _insert(session, Gateway)
        .values(id=gateway_id, site_id=site_id, **{"status": {}, "health": {}, "clock_skewed": False, **row})
        .on_conflict_do_update(index_elements=["id"], set_={"site_id": site_id, **row})
    )


async def ingest_batch(
    session: AsyncSession, batch: EventBatch, now: datetime, max_skew_s: float = 120.0
) -> BatchOutcome:
    """Insert every event once (insert-or-ignore on the ULID) and apply the new ones to device state."""
    skew = (batch.sent_at - now).total_seconds()
    await touch_gateway(
        session,
        batch.site_id,
        batch.gateway_id,
        now,
        clock_skew_s=round(skew, 3),
        clock_skewed=abs(skew) > max_skew_s,
    )
    by_id = {e.id: e for e in batch.events}
    inserted: set[str] = set()
    rows = [
        {
            "id": e.id,
            "site_id": batch.site_id,
            "gateway_id": batch.gateway_id,
            "seq": e.seq,
            "device_id": e.device_id,
            "type": e.type,
            "severity": event_severity(e.type).value,
            "ts": e.ts,
            "received_at": e.received_at,
            "stored_at": now,
            "location": e.location.model_dump(exclude_none=True) if e.location else None,
            "data": e.data,
        }
        for e in by_id.values()
    ]
    for start in range(0, len(rows), _CHUNK):
        stmt = (
            _insert(session, EventRow)
            .values(rows[start : start + _CHUNK])
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(EventRow.id)
        )
        inserted.update((await session.execute(stmt)).scalars())
    new_events = sorted((by_id[i] for i in inserted), key=lambda e: (e.ts, e.seq))
    await _apply_to_devices(session, batch, new_events, now)
    return BatchOutcome(
        stored=len(inserted),
        duplicates=len(batch.events) - len(inserted),
        new_events=new_events,
        clock_skew_s=skew,
    )


async def _apply_to_devices(
    session: AsyncSession, batch: EventBatch, events: list[Event], now: datetime
) -> None:
    if not events:
        return
    device_ids = sorted({e.device_id for e in events})
    existing = {
        d.id: d for d in (await session.execute(select(Device).where(Device.id.in_(device_ids)))).scalars()
    }
    readings: list[dict[str, Any]] = []
    for device_id in device_ids:
        if device_id not in existing:
            await session.execute(
                _insert(session, Device)
                .values(
                    id=device_id,
                    site_id=batch.site_id,
                    gateway_id=batch.gateway_id,
                    kind="unknown",
                    model="",
                    state={},
                    online=True,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
    if len(existing) < len(device_ids):
        existing = {
            d.id: d
            for d in (await session.execute(select(Device).where(Device.id.in_(device_ids)))).scalars()
        }
    states = {d.id: dict(d.state or {}) for d in existing.values()}
    for e in events:
        updates = state_updates(e.type, e.data)
        if updates and e.device_id in states:
            states[e.device_id] = merge_state(states[e.device_id], updates, e.ts)
        if e.type.startswith(("meter.reading", "sensor.reading")):
            ts_ms = int(e.ts.timestamp() * 1000)
            readings += [
                {"device_id": e.device_id, "point": p, "ts_ms": ts_ms, "value": v}
                for p, v in numeric_points(e.data).items()
            ]
    for device_id, state in states.items():
        if state != (existing[device_id].state or {}):
            await session.execute(
                update(Device).where(Device.id == device_id).values(state=state, updated_at=now)
            )
    for start in range(0, len(readings), _CHUNK):
        await session.execute(
            _insert(session, Reading)
            .values(readings[start : start + _CHUNK])
            .on_conflict_do_nothing(index_elements=["device_id", "point", "ts_ms"])
        )


async def apply_status(session: AsyncSession, status: GatewayStatus, now: datetime) -> None:
    """Upsert the site, the gateway (online or not: the Last Will says ``online=false``) and its devices."""
    site_values: dict[str, Any] = {"updated_at": now}
    if status.site_name:
        site_values["name"] = status.site_name
    await session.execute(
        _insert(session, Site)
        .values(id=status.site_id, name=status.site_name, created_at=now, updated_at=now)
        .on_conflict_do_update(index_elements=["id"], set_=site_values)
    )
    gw: dict[str, Any] = {
        "site_id": status.site_id,
        "online": status.online,
        "status_at": status.at,
        "status": status.model_dump(mode="json", exclude={"devices", "health"}),
    }
    if status.online:
        gw["last_seen"] = now
    if status.software is not None:
        gw["software"] = status.software
    if status.health:
        gw["health"] = status.health
    await session.execute(
        _insert(session, Gateway)
        .values(id=status.gateway_id, clock_skewed=False, **{"status": {}, "health": {}, **gw})
        .on_conflict_do_update(index_elements=["id"], set_=gw)
    )
    for info in status.devices:
        values = {
            "site_id": status.site_id,
            "gateway_id": status.gateway_id,
            "kind": info.kind,
            "model": info.model,
            "location": info.location.model_dump(exclude_none=True) if info.location else None,
            "online": True if status.online else None,
            "updated_at": now,
        }
        await session.execute(
            _insert(session, Device)
            .values(id=info.id, state={}, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
    if not status.online:
        await session.execute(
            update(Device).where(Device.gateway_id == status.gateway_id).values(online=None, updated_at=now)
        )


async def audit(
    session: AsyncSession, cmd: CommandRow, status: str, reason: str | None, at: datetime
) -> None:
    session.add(
        CommandAudit(
            command_id=cmd.id,
            operator=cmd.issued_by,
            device_id=cmd.device_id,
            action=cmd.action,
            status=status,
            reason=reason,
            at=at,
        )
    )


async def apply_result(session: AsyncSession, result: CommandResult, now: datetime) -> CommandRow | None:
    """Move a command forward; a final state never changes. Returns the row if its status changed."""
    cmd = await session.get(
        CommandRow, result.command_id, with_for_update=session.bind.dialect.name != "sqlite"
    )
    if cmd is None or cmd.gateway_id != result.gateway_id:
        return None
    current = CommandStatus(cmd.status)
    if current.final or rank(result.status) <= rank(current):
        note = f"ignored: command already {current.value}"
        await audit(session, cmd, result.status.value, f"{result.reason or ''} ({note})".strip(), result.at)
        return None
    cmd.status = result.status.value
    cmd.updated_at = now
    if result.reason is not None:
        cmd.result_reason = result.reason
    if result.state:
        cmd.result_state = result.state
    await audit(session, cmd, result.status.value, result.reason, result.at)
    return cmd


async def advance_command(
    session: AsyncSession, command_id: str, status: CommandStatus, reason: str | None, now: datetime
) -> CommandRow | None:
    """Cloud-side transition (sent, failed to publish): only forward, never out of a final state."""
    cmd = await session.get(CommandRow, command_id)
    if cmd is None:
        return None
    current = CommandStatus(cmd.status)
    if current.final or rank(status) <= rank(current):
        return None
    cmd.status = status.value
    cmd.updated_at = now
    if reason is not None:
        cmd.result_reason = reason
    await audit(session, cmd, status.value, reason, now)
    return cmd


async def expire_due(session: AsyncSession, now: datetime, limit: int = 500) -> list[CommandRow]:
    """Mark non-final commands past ``expires_at`` as expired (with an audit row each)."""
    due: Sequence[CommandRow] = (
        (
            await session.execute(
                select(CommandRow)
                .where(CommandRow.status.in_(NON_FINAL), CommandRow.expires_at <= now)
                .order_by(CommandRow.expires_at)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    out = []
    for cmd in due:
        result = await session.execute(
            update(CommandRow)
            .where(CommandRow.id == cmd.id, CommandRow.status.in_(NON_FINAL))
            .values(
                status=CommandStatus.EXPIRED.value, updated_at=now, result_reason="expired before completion"
            )
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await audit(session, cmd, CommandStatus.EXPIRED.value, "expired before completion", now)
            await session.refresh(cmd)
            out.append(cmd)
    return out


async def mark_silent_gateways(session: AsyncSession, now: datetime, after_s: float) -> list[str]:
    """Gateways not heard from for ``after_s`` go offline and their devices become unknown."""
    cutoff = now - timedelta(seconds=after_s)
    ids = list(
        (
            await session.execute(
                select(Gateway.id).where(Gateway.online.is_(True), Gateway.last_seen < cutoff)
            )
        ).scalars()
    )
    if ids:
        await session.execute(update(Gateway).where(Gateway.id.in_(ids)).values(online=False))
        await session.execute(
            update(Device).where(Device.gateway_id.in_(ids)).values(online=None, updated_at=now)
        )
    return ids
