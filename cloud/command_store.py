"""The SQL of a command's life: store it, move it forward, expire it, read it, audit every step.

Each function takes a synchronous :class:`~sqlalchemy.Connection` inside the caller's transaction and is
run through :func:`cloud.db.write` / :func:`cloud.db.read`: one code path for SQLite and PostgreSQL, and
on a SQLite file the whole transaction is one hand-off from the event loop. These are on every command's
round trip, so the statements are built once with bind parameters (building, caching and compiling a
statement per call, ``.values(...)`` with literals, ORM loads and flushes, cost 1 to 1.5 ms of CPU per
transaction, many times what SQLite takes to run it) and run as :class:`cloud.db.Statement`, which on
SQLite skips ``Connection.execute``'s per-call set-up too.

Status only moves forward (pending -> sent -> accepted -> a final one); the conditions in the UPDATEs
make each move atomic without row locks, on PostgreSQL too: a concurrent writer's update is re-checked
against them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnClause, Connection, Table, bindparam, literal_column, select, update

from cloud.db import Statement
from cloud.tables import Base, CommandAudit, CommandRow, Device, Gateway
from protocol.models import CommandResult, CommandStatus

_RANK = {CommandStatus.PENDING: 0, CommandStatus.SENT: 1, CommandStatus.ACCEPTED: 2}
NON_FINAL = [s.value for s in CommandStatus if not s.final]


def _table(mapped: type[Base]) -> Table:
    """``mapped.__table__``, which SQLAlchemy types as any FromClause (a class may be mapped to a join
    or a select); ours are each mapped to a table."""
    return cast(Table, mapped.__table__)


_COMMANDS = _table(CommandRow)
_C = _COMMANDS.c
_INSERT_COMMAND = Statement(_COMMANDS.insert())
_AUDIT_COLUMNS = ["command_id", "operator", "device_id", "action", "status", "reason", "at"]
_INSERT_AUDIT = Statement(_table(CommandAudit).insert(), _AUDIT_COLUMNS)
_GET_COMMAND = Statement(select(*_C).where(_C.id == bindparam("b_id")))
_GATEWAY = Gateway.__table__.c
_GET_DEVICE = Statement(
    select(
        Device.id,
        Device.kind,
        Device.site_id,
        Device.gateway_id,
        _GATEWAY.online.label("gateway_online"),
        _GATEWAY.last_seen.label("gateway_last_seen"),
    )
    .select_from(Device.__table__.outerjoin(Gateway.__table__, _GATEWAY.id == Device.gateway_id))
    .where(Device.id == bindparam("b_id"))
)
_MARK_SEEN = Statement(
    update(_table(Gateway))
    .where(
        _GATEWAY.id == bindparam("b_id"),
        _GATEWAY.online.is_(False)
        | _GATEWAY.last_seen.is_(None)
        | (_GATEWAY.last_seen < bindparam("b_stale", type_=_GATEWAY.last_seen.type)),
    )
    .values(online=True, last_seen=bindparam("b_now", type_=_GATEWAY.last_seen.type))
)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """What a command needs of its device, and whether its gateway is connected (None: no such
    gateway known yet)."""

    id: str
    kind: str
    site_id: str
    gateway_id: str
    gateway_online: bool | None = None
    gateway_last_seen: datetime | None = None


def rank(status: CommandStatus) -> int:
    return 3 if status.final else _RANK[status]


def _below(status: CommandStatus) -> list[str]:
    """The statuses a command may move to ``status`` from."""
    return [s.value for s in CommandStatus if not s.final and rank(s) < rank(status)]


@functools.cache
def _advance(status: CommandStatus, *, reason: bool, state: bool, gateway: bool) -> Statement:
    """UPDATE a command to ``status`` if it is still in one it may move from (and, for a gateway's
    result, is that gateway's), RETURNING the row; one statement per status and combination of what it
    sets. The statuses it may move from are constants in the SQL (our own enum's values): an expanding
    list of binds would have to be rendered anew on each call."""
    values: dict[str, Any] = {
        "status": bindparam("b_status"),
        "updated_at": bindparam("b_now", type_=_C.updated_at.type),
    }
    if reason:
        values["result_reason"] = bindparam("b_reason")
    if state:
        values["result_state"] = bindparam("b_state", type_=_C.result_state.type)
    below: list[ColumnClause[str]] = [literal_column(f"'{s}'") for s in _below(status)]
    where = [_C.id == bindparam("b_id"), _C.status.in_(below)]
    if gateway:
        where.append(_C.gateway_id == bindparam("b_gateway"))
    return Statement(update(_COMMANDS).where(*where).values(values).returning(*_C))


def _audit_row(cmd: CommandRow, status: str, reason: str | None, at: datetime) -> dict[str, Any]:
    return {
        "command_id": cmd.id,
        "operator": cmd.issued_by,
        "device_id": cmd.device_id,
        "action": cmd.action,
        "status": status,
        "reason": reason,
        "at": at,
    }


def audit(conn: Connection, cmd: CommandRow, status: str, reason: str | None, at: datetime) -> None:
    _INSERT_AUDIT.execute(conn, _audit_row(cmd, status, reason, at))


def device(conn: Connection, device_id: str) -> DeviceRef | None:
    """The device's id, kind, site_id, gateway_id and its gateway's online state, or None."""
    row = _GET_DEVICE.first(conn, {"b_id": device_id})
    return None if row is None else DeviceRef(**row)


def insert(conn: Connection, cmd: CommandRow, reason: str | None) -> None:
    """A new command, with ``pending`` (the operator's ``reason``) and its current status audited (with
    ``cmd.result_reason``, e.g. why it expired at once)."""
    _INSERT_COMMAND.execute(conn, {c.name: getattr(cmd, c.key) for c in _COMMANDS.columns})
    audit(conn, cmd, CommandStatus.PENDING.value, reason, cmd.issued_at)
    if cmd.status != CommandStatus.PENDING.value:
        audit(conn, cmd, cmd.status, cmd.result_reason, cmd.issued_at)


def get(conn: Connection, command_id: str) -> CommandRow | None:
    row = _GET_COMMAND.first(conn, {"b_id": command_id})
    return None if row is None else CommandRow(**row)


def apply_result(conn: Connection, result: CommandResult, now: datetime) -> CommandRow | None:
    """Move a command forward on its gateway's result; a final state never changes. Returns the row if
    its status changed. A final result's ``accepted_at`` (no separate ``accepted`` was sent) is
    audited as the acceptance. A result that changes nothing (another gateway's claim about the command: not
    even audited; a late one) is audited as ignored, with what the command already was."""
    params: dict[str, Any] = {
        "b_id": result.command_id,
        "b_gateway": result.gateway_id,
        "b_status": result.status.value,
        "b_now": now,
    }
    if result.reason is not None:
        params["b_reason"] = result.reason
    if result.state:
        params["b_state"] = result.state
    statement = _advance(
        result.status, reason=result.reason is not None, state=bool(result.state), gateway=True
    )
    row = statement.first(conn, params)
    if row is not None:
        cmd = CommandRow(**row)
        if result.accepted_at is not None and result.status.final:
            # The gateway finished before it announced taking the command on: the trail shows both.
            audit(conn, cmd, CommandStatus.ACCEPTED.value, None, result.accepted_at)
        audit(conn, cmd, result.status.value, result.reason, result.at)
        return cmd
    current = get(conn, result.command_id)
    if current is not None and current.gateway_id == result.gateway_id:
        note = f"ignored: command already {current.status}"
        audit(conn, current, result.status.value, f"{result.reason or ''} ({note})".strip(), result.at)
    return None


def advance(
    conn: Connection, command_id: str, status: CommandStatus, reason: str | None, now: datetime
) -> CommandRow | None:
    """Cloud-side transition (failed to publish): only forward, never out of a final state."""
    params: dict[str, Any] = {
        "b_id": command_id,
        "b_status": status.value,
        "b_now": now,
    }
    if reason is not None:
        params["b_reason"] = reason
    row = _advance(status, reason=reason is not None, state=False, gateway=False).first(conn, params)
    if row is None:
        return None
    cmd = CommandRow(**row)
    audit(conn, cmd, status.value, reason, now)
    return cmd


def expire_due(conn: Connection, now: datetime, limit: int = 500) -> list[CommandRow]:
    """Mark non-final commands past ``expires_at`` as expired (with an audit row each)."""
    due = conn.execute(
        select(_C.id)
        .where(_C.status.in_(NON_FINAL), _C.expires_at <= now)
        .order_by(_C.expires_at)
        .limit(limit)
    ).scalars()
    reason = "expired before completion"
    out = []
    for command_id in list(due):
        row = advance(conn, command_id, CommandStatus.EXPIRED, reason, now)
        if row is not None:
            out.append(row)
    return out


def mark_gateway_seen(conn: Connection, gateway_id: str, now: datetime, every: timedelta) -> None:
    """Mark a known gateway online and seen, writing only when that changes something or ``last_seen``
    is older than ``every``: for messages (command results) that arrive far more often than the
    offline detection needs, and that must not pay ``store.touch_gateway``'s two upserts each."""
    _MARK_SEEN.execute(conn, {"b_id": gateway_id, "b_stale": now - every, "b_now": now})
