"""Stored events, newest first, with cursor paging; ordered by the device's sequence when one is given.
And the events the cloud refused from batches it otherwise stored (``/rejected-events``), newest first.

Only events of the caller's sites are listed; asking for another site by ``site_id`` is a 403."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select

from cloud.api.deps import ReadSessionDep
from cloud.api.paging import BadCursor, decode, encode, older_than, page, time_cursor
from cloud.auth.deps import CurrentUser, require_site, site_clause
from cloud.schemas import ErrorOut, EventOut, EventPage, RejectedEventOut, RejectedEventPage
from cloud.tables import EventRow, RejectedEvent

router = APIRouter(tags=["events"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
}


@router.get(
    "/events",
    response_model=EventPage,
    responses=_ERRORS,
)
async def list_events(
    *,
    user: CurrentUser,
    session: ReadSessionDep,
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
            seq_text, last = decode(cursor, "s", 2)
            if not seq_text.isdigit():
                raise BadCursor("cursor does not belong to a per-device listing")
            seq = int(seq_text)
            query = query.where(or_(EventRow.seq < seq, and_(EventRow.seq == seq, EventRow.id < last)))
    else:
        query = query.order_by(EventRow.id.desc())
        if cursor:
            (last,) = decode(cursor, "i", 1)
            query = query.where(EventRow.id < last)
    rows, tail = await page(session, query, limit)
    next_cursor = None
    if tail is not None:
        next_cursor = encode("s", tail.seq, tail.id) if device_id else encode("i", tail.id)
    return EventPage(items=[EventOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/rejected-events",
    response_model=RejectedEventPage,
    responses=_ERRORS,
)
async def list_rejected_events(
    *,
    user: CurrentUser,
    session: ReadSessionDep,
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
        query = query.where(older_than(cursor, "r", RejectedEvent.received_at, RejectedEvent.key))
    rows, tail = await page(session, query, limit)
    next_cursor = None if tail is None else time_cursor("r", tail.received_at, tail.key)
    return RejectedEventPage(
        items=[RejectedEventOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )
