"""cloud.local_time: a zone's UTC offsets over a range, and a local bucket's start back in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.local_time import offsets, utc_start, zone


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_a_zone_without_transitions_has_one_offset() -> None:
    assert offsets(zone("Asia/Shanghai"), _ms(2026, 1, 1), _ms(2027, 1, 1)) == [(None, 8 * 3_600_000)]
    assert offsets(zone("Asia/Kolkata"), _ms(2026, 1, 1), _ms(2026, 1, 2)) == [(None, 19_800_000)]


def test_transitions_are_found_to_the_millisecond() -> None:
    hour = 3_600_000
    # 2026: New York springs forward at 07:00 UTC on 8 March and falls back at 06:00 UTC on 1 November.
    assert offsets(zone("America/New_York"), _ms(2026, 1, 1), _ms(2027, 1, 1)) == [
        (_ms(2026, 3, 8, 7), -5 * hour),
        (_ms(2026, 11, 1, 6), -4 * hour),
        (None, -5 * hour),
    ]
    # A range that starts on the transition's day, and one that ends just before it.
    assert offsets(zone("America/New_York"), _ms(2026, 3, 8, 6, 59), _ms(2026, 3, 8, 8)) == [
        (_ms(2026, 3, 8, 7), -5 * hour),
        (None, -4 * hour),
    ]
    assert offsets(zone("America/New_York"), _ms(2026, 3, 1), _ms(2026, 3, 8, 7) - 1) == [(None, -5 * hour)]


def test_a_local_bucket_start_is_given_in_utc() -> None:
    local_midnight = _ms(2026, 3, 8)  # wall clock 2026-03-08 00:00, as epoch ms
    assert utc_start(local_midnight, zone("Asia/Shanghai")) == datetime(2026, 3, 7, 16, tzinfo=UTC)
    assert utc_start(local_midnight, zone("America/New_York")) == datetime(2026, 3, 8, 5, tzinfo=UTC)
    assert utc_start(_ms(2026, 3, 9), zone("America/New_York")) == datetime(2026, 3, 9, 4, tzinfo=UTC)


def test_an_unknown_zone_says_which() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
    with pytest.raises(ValueError, match="unknown time zone"):
        zone("../etc/passwd")
