"""Every time on the wire is aware, and comes out of validation as UTC with the one ``datetime.UTC``."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from protocol.models import Event


def _event(ts: datetime) -> Event:
    return Event(id="0" * 26, seq=1, device_id="gate-1", type="gate.opened", ts=ts, received_at=ts)


def test_a_utc_time_is_kept_as_given() -> None:
    ts = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    assert _event(ts).ts is ts


@pytest.mark.parametrize("hours", [8, -5, 0])
def test_an_offset_time_becomes_the_same_instant_in_utc(hours: int) -> None:
    local = datetime(2026, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=hours), "local"))
    ts = _event(local).ts
    assert ts == local
    assert ts.tzinfo is UTC


def test_a_naive_time_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="must carry a time zone"):
        _event(datetime(2026, 3, 1, 8, 0))


def test_parsed_json_times_carry_datetime_utc() -> None:
    event = Event.model_validate_json(
        '{"id": "00000000000000000000000000", "seq": 1, "device_id": "gate-1", "type": "gate.opened",'
        ' "ts": "2026-03-01T16:00:00+08:00", "received_at": "2026-03-01T08:00:00Z"}'
    )
    assert event.ts == event.received_at == datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    assert event.ts.tzinfo is UTC and event.received_at.tzinfo is UTC
