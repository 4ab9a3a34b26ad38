"""Device live state from events: pure functions, no I/O, table-driven.

A device's state is a flat mapping ``key -> {"value": ..., "at": iso-time}``. An event only
overwrites a key whose recorded time is not newer, so late (buffered, redelivered) events never
roll the display back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# (event type) -> (state key, value). Exact types first; ``gate.state``/``door.state`` carry data["state"].
_EXACT: dict[str, tuple[str, str]] = {
    "gate.opened": ("gate", "open"),
    "gate.open": ("gate", "open"),
    "gate.closed": ("gate", "closed"),
    "gate.opening": ("gate", "moving"),
    "gate.closing": ("gate", "moving"),
    "gate.moving": ("gate", "moving"),
    "gate.stopped": ("gate", "stopped"),
    "gate.fault": ("gate", "fault"),
    "gate.obstructed": ("gate", "obstructed"),
    "door.locked": ("lock", "locked"),
    "door.unlocked": ("lock", "unlocked"),
    "door.opened": ("door", "open"),
    "door.open": ("door", "open"),
    "door.closed": ("door", "closed"),
    "door.forced_open": ("door", "forced_open"),
    "door.held_open": ("door", "held_open"),
    "door.fault": ("door", "fault"),
}

_READING_TYPES = ("meter.reading", "sensor.reading")


def state_updates(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """What an event says about its device's state: ``{key: value}``, empty if nothing."""
    if event_type in _EXACT:
        key, value = _EXACT[event_type]
        return {key: value}
    if event_type in ("gate.state", "door.state", "device.state") and isinstance(data.get("state"), str):
        return {event_type.split(".", maxsplit=1)[0]: data["state"]}
    if event_type.startswith(_READING_TYPES):
        return {"reading": data}
    if event_type.startswith("fire."):
        zone = data.get("zone")
        what = event_type.removeprefix("fire.")
        value = data.get("state", what)
        if zone is not None:
            return {f"zone.{zone}": value}
        return {"panel": value}
    if event_type in ("device.online", "device.offline"):
        return {"link": event_type.removeprefix("device.")}
    return {}


def merge_state(state: dict[str, Any], updates: dict[str, Any], at: datetime) -> dict[str, Any]:
    """A new state with ``updates`` applied where ``at`` is not older than what is recorded."""
    out = dict(state)
    stamp = at.isoformat()
    for key, value in updates.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(current.get("at"), str):
            try:
                if datetime.fromisoformat(current["at"]) > at:
                    continue
            except ValueError:
                pass
        out[key] = {"value": value, "at": stamp}
    return out


def numeric_points(data: dict[str, Any]) -> dict[str, float]:
    """The numeric points of a reading event: top-level numbers and those under ``points``/``values``
    (a later one wins over an earlier one of the same name). Numbers as JSON gives them: ``int`` or
    ``float``, never ``bool``; names of 1 to 64 characters."""
    # Runs for every reading ingested: exact type checks in comprehensions, no call per value.
    out: dict[str, float] = {}
    for source in (data, data.get("points"), data.get("values")):
        if type(source) is dict:
            out.update(
                {
                    k: float(v)
                    for k, v in source.items()
                    if (type(v) is float or type(v) is int) and type(k) is str and 0 < len(k) <= 64
                }
            )
    return out


def merge_latest(state: dict[str, Any], latest: dict[str, tuple[Any, datetime]]) -> dict[str, Any]:
    """A new state with each ``key -> (value, at)`` applied where ``at`` is not older than recorded.

    Equivalent to folding :func:`merge_state` over a device's events in (ts, seq) order, one merge
    per batch instead of one per event: per key, once an event overwrites the recorded value every
    later one does too (its time is not older), so only the last event per key can decide — it wins
    if its time is not older than what was recorded before the batch, and else so would none.
    """
    out = dict(state)
    for key, (value, at) in latest.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(current.get("at"), str):
            try:
                if datetime.fromisoformat(current["at"]) > at:
                    continue
            except ValueError:
                pass
        out[key] = {"value": value, "at": at.isoformat()}
    return out
