"""Sites, gateways, devices (with live state) and device readings history.

Lists page by cursor (``limit``, ``next_cursor``) and show the caller's sites only (``site_id`` of
another site: 403); a device of another site: 403."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from sqlalchemy import BigInteger, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud import local_time
from cloud.api.deps import ReadSessionDep
from cloud.api.paging import after, key_cursor, page, require_aware
from cloud.auth.deps import CurrentUser, require_site, site_clause
from cloud.auth.permissions import Principal
from cloud.errors import BadQuery, NotFound
from cloud.schemas import (
    Bucket,
    DeviceOut,
    DevicePage,
    ErrorOut,
    GatewayOut,
    GatewayPage,
    ReadingSeries,
    ReadingsOut,
    SiteOut,
    SitePage,
)
from cloud.tables import Device, Gateway, Reading, Site

router = APIRouter(tags=["registry"], responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bucket(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match or int(match[1]) == 0:
        raise BadQuery(f"bucket {text!r} must look like 30s, 15m, 1h or 1d")
    return int(match[1]) * _UNITS[match[2]]


_LIMIT = Query(ge=1, le=1000, description="At most this many; the next page through next_cursor")


@router.get("/sites", response_model=SitePage, responses={400: {"model": ErrorOut}})
async def list_sites(
    user: CurrentUser,
    session: ReadSessionDep,
    limit: Annotated[int, _LIMIT] = 500,
    cursor: str | None = None,
) -> SitePage:
    """The caller's estates by id, each with how many devices of each kind it has (an operations
    centre's list of estates, without reading every device)."""
    query = select(Site).where(site_clause(user, Site.id)).order_by(Site.id)
    if cursor:
        query = query.where(after(cursor, "s", Site.id))
    rows, tail = await page(session, query, limit)
    counts: dict[str, dict[str, int]] = {}
    if rows:
        by_kind = (
            select(Device.site_id, Device.kind, func.count())
            .where(Device.site_id.in_([r.id for r in rows]))
            .group_by(Device.site_id, Device.kind)
        )
        for site_id, kind, n in (await session.execute(by_kind)).all():
            counts.setdefault(site_id, {})[kind] = n
    return SitePage(
        items=[SiteOut.model_validate(r).model_copy(update={"devices": counts.get(r.id, {})}) for r in rows],
        next_cursor=None if tail is None else key_cursor("s", tail.id),
    )


@router.get("/gateways", response_model=GatewayPage, responses={400: {"model": ErrorOut}})
async def list_gateways(
    user: CurrentUser,
    session: ReadSessionDep,
    site_id: str | None = None,
    limit: Annotated[int, _LIMIT] = 500,
    cursor: str | None = None,
) -> GatewayPage:
    rows, next_cursor = await _by_site(
        session, user, Gateway, "g", site_id=site_id, filters={}, limit=limit, cursor=cursor
    )
    return GatewayPage(items=[GatewayOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/devices", response_model=DevicePage, responses={400: {"model": ErrorOut}})
async def list_devices(
    *,
    user: CurrentUser,
    session: ReadSessionDep,
    site_id: str | None = None,
    gateway_id: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, _LIMIT] = 500,
    cursor: str | None = None,
) -> DevicePage:
    """Devices with their live state, by estate then id; a console reads one estate's (``site_id``)."""
    filters = {Device.gateway_id: gateway_id, Device.kind: kind}
    rows, next_cursor = await _by_site(
        session, user, Device, "d", site_id=site_id, filters=filters, limit=limit, cursor=cursor
    )
    return DevicePage(items=[DeviceOut.model_validate(r) for r in rows], next_cursor=next_cursor)


async def _by_site(
    session: AsyncSession,
    user: Principal,
    table: type[Gateway] | type[Device],
    tag: str,
    *,
    site_id: str | None,
    filters: dict[Any, str | None],
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """A page of ``table``'s rows at the caller's sites (or at ``site_id``: 403 if not theirs) that
    match ``filters`` (column: value, None to ignore), by site then id; and the next page's cursor."""
    query = select(table).where(site_clause(user, table.site_id)).order_by(table.site_id, table.id)
    if site_id:
        require_site(user, site_id)
        query = query.where(table.site_id == site_id)
    for column, value in filters.items():
        if value:
            query = query.where(column == value)
    if cursor:
        query = query.where(after(cursor, tag, table.site_id, table.id))
    rows, tail = await page(session, query, limit)
    return rows, None if tail is None else key_cursor(tag, tail.site_id, tail.id)


@router.get("/devices/{device_id}", response_model=DeviceOut, responses={404: {"model": ErrorOut}})
async def get_device(device_id: str, user: CurrentUser, session: ReadSessionDep) -> DeviceOut:
    row = await session.get(Device, device_id)
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    require_site(user, row.site_id)
    return DeviceOut.model_validate(row)


@router.get(
    "/devices/{device_id}/readings",
    response_model=ReadingsOut,
    responses={404: {"model": ErrorOut}, 400: {"model": ErrorOut}},
)
async def get_readings(
    *,
    device_id: str,
    user: CurrentUser,
    session: ReadSessionDep,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    bucket: Annotated[str, Query(description="30s, 15m, 1h, 1d")] = "1h",
    point: str | None = None,
    tz: Annotated[
        str | None,
        Query(description="IANA zone whose wall clock the buckets follow; default: the estate's, else UTC"),
    ] = None,
) -> ReadingsOut:
    """Numeric history of a device's points (from meter/sensor readings), aggregated per time bucket.

    Buckets follow the estate's wall clock (its site config's ``timezone``), so a day is its local day;
    on a day a clock change makes 23 or 25 hours long, that day's bucket is too."""
    device = await session.get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    require_site(user, device.site_id)
    size_ms = parse_bucket(bucket) * 1000
    require_aware(("from", from_), ("to", to))
    if tz is None:
        site = await session.get(Site, device.site_id)
        tz = (site.timezone if site is not None else None) or "UTC"
    try:
        zone = local_time.zone(tz)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None

    where = [Reading.device_id == device_id]
    if from_ is not None:
        where.append(Reading.ts_ms >= int(from_.timestamp() * 1000))
    if to is not None:
        where.append(Reading.ts_ms < int(to.timestamp() * 1000))
    if point:
        where.append(Reading.point == point)
    start = await _bucket_start(session, where, from_=from_, to=to, size_ms=size_ms, zone=zone, bucket=bucket)
    if start is None:
        return ReadingsOut(device_id=device_id, bucket_s=size_ms // 1000, timezone=zone.key, series=[])
    query = (
        select(
            Reading.point,
            start,
            func.count().label("n"),
            func.min(Reading.value),
            func.max(Reading.value),
            func.avg(Reading.value),
        )
        .where(*where)
        .group_by(Reading.point, start)
        .order_by(Reading.point, start)
    )
    series: dict[str, list[Bucket]] = {}
    for name, bucket_ms, n, lo, hi, avg in (await session.execute(query)).all():
        series.setdefault(name, []).append(
            Bucket(
                start=local_time.utc_start(int(bucket_ms), zone),
                count=n,
                min=lo,
                max=hi,
                avg=float(avg),
            )
        )
    return ReadingsOut(
        device_id=device_id,
        bucket_s=size_ms // 1000,
        timezone=zone.key,
        series=[ReadingSeries(point=p, buckets=b) for p, b in series.items()],
    )


async def _bucket_start(
    session: AsyncSession,
    where: list[Any],
    *,
    from_: datetime | None,
    to: datetime | None,
    size_ms: int,
    zone: ZoneInfo,
    bucket: str,
) -> Any:
    """Each reading's bucket as SQL: the start of its ``size_ms`` bucket on ``zone``'s wall clock, in
    local epoch milliseconds. None when no reading matches ``where``; BadQuery past ``MAX_BUCKETS``."""
    if from_ is not None:
        # No `to`: up to now. Reading the newest reading's time would scan the device's rows once more.
        end = int(to.timestamp() * 1000) if to is not None else int(time.time() * 1000)
        span: tuple[int | None, int | None] = (int(from_.timestamp() * 1000), end)
    else:
        found = (
            await session.execute(select(func.min(Reading.ts_ms), func.max(Reading.ts_ms)).where(*where))
        ).one()
        span = (found[0], found[1])
    if span[0] is None or span[1] is None:
        return None
    lo, hi = int(span[0]), int(span[1])
    # As Prometheus limits a query's points: a year at bucket=1s would be one bucket per reading, an
    # answer of hundreds of megabytes built on the event loop.
    buckets = -(-(hi - lo + (0 if to is not None else 1)) // size_ms)  # `to` is exclusive, a reading not
    if buckets > MAX_BUCKETS:
        raise BadQuery(
            f"bucket={bucket} over {_days(hi - lo)} would be {buckets:,} buckets"
            f" per point; at most {MAX_BUCKETS:,}: ask for a larger bucket or a shorter from/to"
        )
    # The offsets are looked up a day at a time: a range of centuries (to=9999) would cost the event
    # loop seconds. Readings are from this decade; before and after the window the first and last
    # offsets hold.
    now_ms = int(time.time() * 1000)
    first = min(max(lo, now_ms - _OFFSET_WINDOW_MS), now_ms)
    last = max(min(hi, now_ms + _OFFSET_WINDOW_MS), first)
    local = Reading.ts_ms + _offset_sql(local_time.offsets(zone, first, last))
    return (local - local % size_ms).label("start")


_OFFSET_WINDOW_MS = 30 * 366 * 86_400_000
MAX_BUCKETS = 11_000  # per point: a year of hours, a month of 5 minutes


def _days(ms: int) -> str:
    days = ms / 86_400_000
    return f"{days:,.1f} days" if days >= 1 else f"{ms / 3_600_000:,.1f} hours"


def _offset_sql(pieces: list[tuple[int | None, int]]) -> Any:
    """The UTC offset of each reading's time, in milliseconds, from :func:`cloud.local_time.offsets`."""
    last = literal(pieces[-1][1], BigInteger)
    if len(pieces) == 1:
        return last
    whens = [(Reading.ts_ms < until, literal(offset, BigInteger)) for until, offset in pieces[:-1]]
    return case(*whens, else_=last)
