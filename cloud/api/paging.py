"""Cursor paging for the API's lists: opaque cursors (a tag and the last row's sort key), ``limit + 1``
rows read to know whether a next page exists; and the check of a list's or history's time window."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.errors import BadQuery, CloudError


class BadCursor(CloudError):
    status = 400
    code = "bad_cursor"


def encode(*parts: object) -> str:
    return base64.urlsafe_b64encode("|".join(map(str, parts)).encode()).decode().rstrip("=")


def decode(cursor: str, tag: str, parts: int) -> list[str]:
    """The ``parts`` fields after ``tag`` of a cursor :func:`encode` made; :class:`BadCursor` if it is
    not one, or one of another listing (another tag)."""
    try:
        fields = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor is not one this API returned") from None
    if len(fields) != parts + 1 or fields[0] != tag:
        raise BadCursor("cursor does not belong to this listing")
    return fields[1:]


def older_than(cursor: str, tag: str, at: Any, key: Any) -> ColumnElement[bool]:
    """For a list newest first by (time column ``at``, unique column ``key``): the rows after the one a
    :func:`time_cursor` cursor names."""
    at_text, last = decode(cursor, tag, 2)
    try:
        when = datetime.fromisoformat(at_text)
    except ValueError:
        raise BadCursor("cursor is not one this API returned") from None
    return or_(at < when, and_(at == when, key < last))


def time_cursor(tag: str, at: datetime, key: str) -> str:
    return encode(tag, at.isoformat(), key)


def after(cursor: str, tag: str, *key: Any) -> ColumnElement[bool]:
    """For a list in ascending order of the string columns ``key``: the rows after the one a
    :func:`key_cursor` cursor names (a row-value comparison, which both SQLite and PostgreSQL index)."""
    last = decode(cursor, tag, len(key))
    clause: ColumnElement[bool] = tuple_(*key) > tuple_(*last) if len(key) > 1 else key[0] > last[0]
    return clause


def key_cursor(tag: str, *values: str) -> str:
    return encode(tag, *values)


async def page(session: AsyncSession, query: Select[Any], limit: int) -> tuple[list[Any], Any | None]:
    """Up to ``limit`` rows of ``query``, and the last of them when more follow (the next cursor's)."""
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    return rows[:limit], (rows[limit - 1] if len(rows) > limit else None)


def require_aware(*times: tuple[str, datetime | None]) -> None:
    """:class:`BadQuery` for a time without a zone: which zone the caller meant cannot be guessed."""
    for name, value in times:
        if value is not None and value.tzinfo is None:
            raise BadQuery(f"{name} must carry a time zone, e.g. 2026-01-01T00:00:00Z")
