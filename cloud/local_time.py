"""An estate's wall clock for time buckets: a day of readings is the estate's day, not UTC's.

A chart of daily electricity use in Shanghai (UTC+8) whose days ran from 08:00 to 08:00 put the evening
peak of one day into the next. The readings store epoch milliseconds; aggregating in SQL by local time
needs the zone's UTC offset at each reading, which SQLite cannot look up. Offsets change only at a
zone's transitions (daylight saving, a change of law), so over a range they are a short piecewise
constant function: :func:`offsets` finds it with :mod:`zoneinfo`, and SQL adds it with a ``CASE``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["offsets", "utc_start", "zone"]

_DAY_MS = 86_400_000


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError saying so if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from exc


def _offset_ms(tz: ZoneInfo, ms: int) -> int:
    offset = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).utcoffset() or timedelta(0)
    return int(offset.total_seconds() * 1000)


def offsets(tz: ZoneInfo, lo_ms: int, hi_ms: int) -> list[tuple[int | None, int]]:
    """``tz``'s UTC offset over [lo_ms, hi_ms] as ``[(until_ms, offset_ms), ..., (None, offset_ms)]``:
    each offset holds before its ``until_ms`` (and from the previous one's); the last one to the end.

    Looked at once a day and bisected to the millisecond where it changed: two transitions less than a
    day apart that cancel out would be missed (no zone has had such since 1970)."""
    out: list[tuple[int | None, int]] = []
    current = _offset_ms(tz, lo_ms)
    at = lo_ms
    while at < hi_ms:
        step = min(at + _DAY_MS, hi_ms)
        following = _offset_ms(tz, step)
        if following != current:
            before, after = at, step  # the offset is `current` at `before`, another at `after`
            while after - before > 1:
                middle = (before + after) // 2
                if _offset_ms(tz, middle) == current:
                    before = middle
                else:
                    after = middle
            out.append((after, current))
            current = _offset_ms(tz, after)
            at = after
            continue
        at = step
    out.append((None, current))
    return out


def utc_start(local_ms: int, tz: ZoneInfo) -> datetime:
    """A bucket's start, given as local wall-clock epoch milliseconds, as an aware UTC time. A wall time
    a transition skips or repeats is taken as it was before the transition (``fold=0``)."""
    wall = datetime(1970, 1, 1) + timedelta(milliseconds=local_ms)
    return wall.replace(tzinfo=tz).astimezone(UTC)
