"""Store operations of the access feature. Each works inside the caller's session and transaction.

Versions: a site's list starts at version 1 (empty). Every change takes the next version with one
``UPDATE ... SET version = version + 1 RETURNING version``, which serialises changes of one site on
PostgreSQL (row lock until commit) and SQLite (``BEGIN IMMEDIATE``), and appends one row per changed
credential to ``access_changes``. The log keeps the last ``keep`` versions; ``log_floor`` says how far
back a delta can start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.access.plan import Plan, SyncKind, compact_changes
from cloud.access.tables import AccessSite, CredentialChange, CredentialRow, GatewaySync
from protocol.credentials import Credential, CredentialSync

__all__ = [
    "FIRST_VERSION",
    "build_sync",
    "ensure_site",
    "record_change",
    "site_count",
    "to_wire",
]

FIRST_VERSION = 1  # the empty list


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def ensure_site(session: AsyncSession, site_id: str, now: datetime) -> AccessSite:
    await session.execute(
        _insert(session, AccessSite)
        .values(
            site_id=site_id, version=FIRST_VERSION, log_floor=FIRST_VERSION, pin_salt=None, updated_at=now
        )
        .on_conflict_do_nothing(index_elements=["site_id"])
    )
    site = await session.get(AccessSite, site_id, populate_existing=True)
    assert site is not None
    return site


async def record_change(
    session: AsyncSession,
    site_id: str,
    changes: list[tuple[str, str]],
    *,
    by: str,
    now: datetime,
    keep: int,
) -> int:
    """Take the site's next version for ``changes`` ((credential id, "upsert"|"delete")); return it."""
    await ensure_site(session, site_id, now)
    version = int(
        (
            await session.execute(
                update(AccessSite)
                .where(AccessSite.site_id == site_id)
                .values(version=AccessSite.version + 1, updated_at=now)
                .returning(AccessSite.version)
            )
        ).scalar_one()
    )
    session.add_all(
        CredentialChange(site_id=site_id, version=version, credential_id=cid, op=op, by=by, at=now)
        for cid, op in changes
    )
    floor = version - keep
    if floor > FIRST_VERSION:
        # Deltas can start at `floor` at the earliest: they need the changes after it, which we keep.
        await session.execute(
            delete(CredentialChange).where(
                CredentialChange.site_id == site_id, CredentialChange.version <= floor
            )
        )
        await session.execute(
            update(AccessSite)
            .where(AccessSite.site_id == site_id, AccessSite.log_floor < floor)
            .values(log_floor=floor)
        )
    return version


async def site_count(session: AsyncSession, site_id: str) -> int:
    n = await session.scalar(
        select(func.count()).select_from(CredentialRow).where(CredentialRow.site_id == site_id)
    )
    return int(n or 0)


def to_wire(row: CredentialRow) -> Credential:
    return Credential(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        value=row.value,
        holder=row.holder,
        doors=list(row.doors),
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        max_uses=row.max_uses,
        revoked=row.revoked,
    )


async def build_sync(
    session: AsyncSession, site: AccessSite, gateway_id: str, plan: Plan
) -> CredentialSync | None:
    """The message ``plan`` calls for, read in the caller's transaction (one consistent snapshot)."""
    if plan.kind is SyncKind.NONE:
        return None
    if plan.kind is SyncKind.FULL:
        rows = (
            await session.execute(
                select(CredentialRow).where(CredentialRow.site_id == site.site_id).order_by(CredentialRow.id)
            )
        ).scalars()
        return CredentialSync(
            site_id=site.site_id,
            gateway_id=gateway_id,
            from_version=0,
            to_version=site.version,
            full=True,
            upserts=[to_wire(r) for r in rows],
        )
    changes = (
        await session.execute(
            select(CredentialChange.version, CredentialChange.credential_id, CredentialChange.op).where(
                CredentialChange.site_id == site.site_id,
                CredentialChange.version > plan.from_version,
                CredentialChange.version <= site.version,
            )
        )
    ).all()
    upsert_ids, deletes = compact_changes((int(v), cid, op) for v, cid, op in changes)
    by_id = {
        r.id: r
        for r in (
            await session.execute(select(CredentialRow).where(CredentialRow.id.in_(upsert_ids)))
        ).scalars()
    }
    return CredentialSync(
        site_id=site.site_id,
        gateway_id=gateway_id,
        from_version=plan.from_version,
        to_version=site.version,
        upserts=[to_wire(by_id[cid]) for cid in upsert_ids if cid in by_id],
        deletes=deletes,
    )


async def note_reported(
    session: AsyncSession,
    site_id: str,
    gateway_id: str,
    *,
    version: int,
    count: int,
    rejected: str | None,
    now: datetime,
) -> None:
    values = {
        "site_id": site_id,
        "reported_version": version,
        "reported_count": count,
        "reported_at": now,
        "rejected": rejected,
    }
    await session.execute(
        _insert(session, GatewaySync)
        .values(gateway_id=gateway_id, sent_full=False, **values)
        .on_conflict_do_update(index_elements=["gateway_id"], set_=values)
    )


async def note_sent(
    session: AsyncSession, site_id: str, gateway_id: str, *, version: int, full: bool, now: datetime
) -> None:
    values = {"site_id": site_id, "sent_version": version, "sent_full": full, "sent_at": now}
    await session.execute(
        _insert(session, GatewaySync)
        .values(gateway_id=gateway_id, **values)
        .on_conflict_do_update(index_elements=["gateway_id"], set_=values)
    )
