"""The audit trails refuse to be rewritten, by the database itself (migration 0011): SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.auth.tables import AuthAuditRow
from cloud.tables import CommandAudit
from cloud.workorders.tables import Transition, WorkOrder

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


async def _trail(sessions: async_sessionmaker[AsyncSession]) -> dict[str, type]:
    """One row in each audit table; returns the models by table name."""
    async with sessions() as s, s.begin():
        s.add(
            CommandAudit(
                command_id="c-1", operator="ops-li", device_id="gate-1", action="open",
                status="succeeded", reason="visitor at the east gate", at=NOW,
            )
        )  # fmt: skip
        s.add(AuthAuditRow(at=NOW, username="ops-li", action="login", client_ip="127.0.0.1"))
        wo = WorkOrder(
            source="rule", category="fire", priority="P1", title="Fire alarm zone 3", status="open",
            created_by="rules", first_seen=NOW, last_seen=NOW, response_due=NOW + timedelta(minutes=5),
            resolution_due=NOW + timedelta(hours=4), created_at=NOW, updated_at=NOW,
        )  # fmt: skip
        s.add(wo)
        await s.flush()
        s.add(Transition(work_order_id=wo.id, from_status=None, to_status="open", actor="rules", at=NOW))
    return {"command_audit": CommandAudit, "auth_audit": AuthAuditRow, "work_order_history": Transition}


async def _count(sessions: async_sessionmaker[AsyncSession], model: type) -> int:
    async with sessions() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


@pytest.mark.parametrize("table", ["command_audit", "auth_audit", "work_order_history"])
async def test_an_audit_row_cannot_be_changed_or_deleted_and_stays_as_written(
    sessions: async_sessionmaker[AsyncSession], table: str
) -> None:
    model = (await _trail(sessions))[table]
    async with sessions() as s:
        before = [tuple(r) for r in (await s.execute(text(f"SELECT * FROM {table}"))).all()]
    assert len(before) == 1

    column = {"command_audit": "status", "auth_audit": "action", "work_order_history": "to_status"}[table]
    for statement in (update(model).values({column: "rewritten"}), delete(model)):
        with pytest.raises(DBAPIError, match=f"{table} is append-only"):
            async with sessions() as s, s.begin():
                await s.execute(statement)

    async with sessions() as s:
        after = [tuple(r) for r in (await s.execute(text(f"SELECT * FROM {table}"))).all()]
    assert after == before
    # Appending still works: the trail grows as before.
    await _trail(sessions)
    assert await _count(sessions, model) == 2


@pytest.mark.parametrize("sessions", ["postgresql"], indirect=True)  # SQLite has no TRUNCATE
async def test_postgresql_refuses_to_truncate_an_audit_table(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _trail(sessions)
    with pytest.raises(DBAPIError, match="command_audit is append-only: TRUNCATE refused"):
        async with sessions() as s, s.begin():
            await s.execute(text("TRUNCATE command_audit"))
    assert await _count(sessions, CommandAudit) == 1


async def test_the_guard_comes_off_with_its_migration(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Downgrading migration 0011 drops its triggers (and PostgreSQL's function): the trail can be
    changed again, by whoever runs the downgrade; upgrading puts the guard back."""
    from alembic import command
    from sqlalchemy import Connection

    from cloud.db import alembic_config

    await _trail(sessions)

    def migrate(conn: Connection, target: str) -> None:
        if target == "heads":
            command.upgrade(alembic_config(conn), target)
        else:
            command.downgrade(alembic_config(conn), target)

    engine = sessions.kw["bind"]
    async with engine.begin() as conn:
        await conn.run_sync(migrate, "append_only_audit@-1")
    async with sessions() as s, s.begin():
        await s.execute(update(AuthAuditRow).values(action="rewritten"))
    async with engine.begin() as conn:
        await conn.run_sync(migrate, "heads")
    with pytest.raises(DBAPIError, match="auth_audit is append-only"):
        async with sessions() as s, s.begin():
            await s.execute(delete(AuthAuditRow))
