"""Stored events, newest first, with cursor paging; ordered by the device's sequence when one is given.
And the events the cloud refused from batches it otherwise stored (``/rejected-events``), newest first.

Only events of the caller's sites are listed; asking for another site by ``site_id`` is a 403."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.api.deps import SessionDep
from cloud.auth.deps import CurrentUser, require_site, site_clause
from cloud.errors import CloudError
from cloud.schemas import ErrorOut, EventOut, EventPage, RejectedEventOut, RejectedEventPage
from cloud.tables import EventRow, RejectedEvent

router = APIRouter(tags=["events"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
}


class BadCursor(CloudError):
    status = 400
    code = "bad_cursor"


def _encode(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(map(str, parts)).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[str]:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor is not one this API returned") from None


@router.get(
    "/events",
    response_model=EventPage,
    responses=_ERRORS,
)
async def list_events(
    *,
    user: CurrentUser,
    session: SessionDep,
    device_id: str | None = None,
    type: Annotated[str | None, Query(max_length=64)] = None,
    site_id: str | None = None,
    gateway_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> EventPage:
    if site_id:
        require_site(user, site_id)
    query = select(EventRow).where(site_clause(user, EventRow.site_id))
    if device_id:
        query = query.where(EventRow.device_id == device_id)
    if type:
        query = query.where(EventRow.type == type)
    if site_id:
        query = query.where(EventRow.site_id == site_id)
    if gateway_id:
        query = query.where(EventRow.gateway_id == gateway_id)
    if device_id:
        query = query.order_by(EventRow.seq.desc(), EventRow.id.desc())
        if cursor:
            parts = _decode(cursor)
            if len(parts) != 3 or parts[0] != "s" or not parts[1].isdigit():
                raise BadCursor("cursor does not belong to a per-device listing")
            seq, last = int(parts[1]), parts[2]
            query = query.where(or_(EventRow.seq < seq, and_(EventRow.seq == seq, EventRow.id < last)))
    else:
        query = query.order_by(EventRow.id.desc())
        if cursor:
            parts = _decode(cursor)
            if len(parts) != 2 or parts[0] != "i":
                raise BadCursor("cursor does not belong to this listing")
            query = query.where(EventRow.id < parts[1])
    rows, tail = await _page(session, query, limit)
    next_cursor = None
    if tail is not None:
        next_cursor = _encode("s", tail.seq, tail.id) if device_id else _encode("i", tail.id)
    return EventPage(items=[EventOut.model_validate(r) for r in rows], next_cursor=next_cursor)


async def _page(session: AsyncSession, query: Select[Any], limit: int) -> tuple[list[Any], Any | None]:
    """Up to ``limit`` rows of ``query``, and the last of them when more follow (the next cursor's)."""
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    return rows[:limit], (rows[limit - 1] if len(rows) > limit else None)


@router.get(
    "/rejected-events",
    response_model=RejectedEventPage,
    responses=_ERRORS,
)
async def list_rejected_events(
    *,
    user: CurrentUser,
    session: SessionDep,
    site_id: str | None = None,
    gateway_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> RejectedEventPage:
    """Events a gateway sent that the cloud's schema refused, kept as received with the reason (their
    batch was acknowledged, so this is their only copy): what a version mismatch or a damaged buffer
    row looks like from the operations centre."""
    if site_id:
        require_site(user, site_id)
    query = select(RejectedEvent).where(site_clause(user, RejectedEvent.site_id))
    if site_id:
        query = query.where(RejectedEvent.site_id == site_id)
    if gateway_id:
        query = query.where(RejectedEvent.gateway_id == gateway_id)
    query = query.order_by(RejectedEvent.received_at.desc(), RejectedEvent.key.desc())
    if cursor:
        parts = _decode(cursor)
        if len(parts) != 3 or parts[0] != "r":
            raise BadCursor("cursor does not belong to this listing")
        try:
            at = datetime.fromisoformat(parts[1])
        except ValueError:
            raise BadCursor("cursor is not one this API returned") from None
        query = query.where(
            or_(
                RejectedEvent.received_at < at,
                and_(RejectedEvent.received_at == at, RejectedEvent.key < parts[2]),
            )
        )
    rows, tail = await _page(session, query, limit)
    next_cursor = None if tail is None else _encode("r", tail.received_at.isoformat(), tail.key)
    return RejectedEventPage(
        items=[RejectedEventOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )
