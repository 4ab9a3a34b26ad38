"""Events in words a property manager understands (English with the console's Chinese terms)."""

from __future__ import annotations

from protocol import Event

_WORDS: dict[str, str] = {
    "gate.opened": "gate opened (开闸)",
    "gate.closed": "gate closed",
    "gate.state": "gate position reported",
    "gate.vehicle_detected": "vehicle waiting at the gate",
    "gate.plate_read": "number plate read",
    "gate.fault": "GATE FAULT (道闸故障) — engineering to check",
    "gate.obstructed": "gate obstructed: something is under the barrier",
    "access.presented": "card/PIN presented",
    "access.granted": "access granted (开门)",
    "access.denied": "access DENIED",
    "door.opened": "door opened",
    "door.closed": "door closed",
    "door.forced_open": "DOOR FORCED OPEN (门禁报警)",
    "door.held_open": "door held open too long",
    "door.relock_failed": "DOOR DID NOT RE-LOCK — check the lock",
    "access.read_error": "card reader sent a damaged read",
    "meter.reading": "meter reading (电表/水表)",
    "meter.tamper": "METER TAMPER suspected",
    "fire.alarm": "FIRE ALARM (火警)",
    "fire.prealarm": "fire pre-alarm: smoke detected, checking",
    "fire.fault": "fire system fault (消防故障)",
    "fire.restored": "fire zone back to normal",
    "fire.panel_fault": "fire panel fault (mains/battery)",
    "fire.linkage_activated": "FIRE LINKAGE (消防联动): doors released, gates raised",
    "fire.linkage_fault": "fire linkage could not drive a device — send someone",
    "fire.linkage_released": "fire linkage released by operator",
    "intercom.call_started": "visitor calling (可视对讲)",
    "intercom.call_answered": "call answered",
    "intercom.call_ended": "call ended",
    "intercom.call_missed": "call MISSED — nobody answered",
    "sensor.reading": "sensor reading",
    "sensor.threshold_exceeded": "SENSOR ALARM: threshold exceeded",
    "sensor.normal": "sensor back to normal",
    "device.offline": "DEVICE OFFLINE (离线)",
    "device.online": "device back online",
    "command.succeeded": "remote command done",
    "command.failed": "remote command FAILED",
    "command.rejected": "remote command refused",
    "command.expired": "remote command expired",
    "buffer.evicted": "buffer full: old readings dropped",
}


def where(event: Event) -> str:
    loc = event.location
    if loc is None:
        return ""
    parts = [
        f"building {loc.building}" if loc.building else "",
        f"unit {loc.unit}" if loc.unit else "",
        f"apt {loc.apartment}" if loc.apartment else "",
        loc.lane or "",
        loc.area or "",
    ]
    text = ", ".join(p for p in parts if p)
    return f" [{text}]" if text else ""


def describe(event: Event) -> str:
    words = _WORDS.get(event.type, event.type)
    d = event.data
    extra = ""
    if event.type.startswith("fire.") and "zone" in d:
        extra = f" zone {d['zone']}" + (f" ({d['zone_name']})" if d.get("zone_name") else "")
    elif event.type.startswith("access.") and ("card" in d or "pin" in d):
        extra = f" card {d.get('card', '****')}"
    elif d.get("reason") and (event.type.startswith("command.") or event.type == "device.offline"):
        extra = f": {d['reason']}"
    elif event.type == "intercom.call_started" and d.get("apartment"):
        extra = f" for apartment {d['apartment']}"
    return f"{event.ts.astimezone().strftime('%H:%M:%S')}  {event.device_id}{where(event)}: {words}{extra}"
