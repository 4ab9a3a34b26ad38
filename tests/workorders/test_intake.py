"""Events and conditions into work orders: a real database, the shipped rules, an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from cloud.tables import Gateway
from cloud.workorders.tables import Occurrence, WorkOrder
from tests.workorders.support import GATEWAY, SITE, Clock, Db, event, ingest, service


async def work_orders(db: Db) -> list[WorkOrder]:
    async with db.sessions() as s:
        return list((await s.execute(select(WorkOrder).order_by(WorkOrder.id))).scalars())


Case = tuple[str, str, dict[str, Any], dict[str, str], str, str, str, list[str]]
SECURITY, ENGINEERING = ["security"], ["engineering"]
RULE_CASES: list[Case] = [
    # (device, type, data, location, rule, category, priority, teams)
    ("panel-1", "fire.alarm", {"zone": 3, "zone_name": "Block C lobby"}, {"building": "C"},
     "fire-alarm", "fire", "emergency", ["security", "engineering"]),
    ("panel-1", "fire.fault", {"zone": 4}, {}, "fire-fault", "fire", "urgent", ENGINEERING),
    ("panel-1", "fire.panel_fault", {"fault": "mains_fail"}, {},
     "fire-panel-fault", "fire", "urgent", ENGINEERING),
    ("door-1", "door.forced_open", {}, {"building": "3"}, "door-forced", "security", "urgent", SECURITY),
    ("door-1", "door.held_open", {"open_s": 95}, {}, "door-held", "security", "normal", SECURITY),
    ("gate-1", "gate.fault", {"state": "fault"}, {"lane": "east in"},
     "gate-fault", "gate", "urgent", ENGINEERING),
    ("gate-1", "gate.obstructed", {"loop_occupied": True}, {}, "gate-obstructed", "gate", "urgent", SECURITY),
    ("th-1", "sensor.threshold_exceeded", {"metric": "humidity", "value": 91, "bound": "max", "limit": 80},
     {"area": "B1 switch room"}, "switch-room-humidity", "sensor", "urgent", ENGINEERING),
    ("pr-1", "sensor.threshold_exceeded", {"metric": "pressure", "value": 0.1, "bound": "min", "limit": 0.3},
     {"area": "pump room 2"}, "pump-room-pressure", "sensor", "urgent", ENGINEERING),
    ("meter-9", "meter.reading", {"power_w": 42000, "energy_kwh": 10}, {},
     "power-over-limit", "meter", "urgent", ENGINEERING),
    ("meter-9", "meter.tamper", {"reason": "cover_open"}, {},
     "meter-tamper", "meter", "normal", ["engineering", "security"]),
]  # fmt: skip


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[4] for c in RULE_CASES])
async def test_each_event_rule_opens_its_work_order(db: Db, clock: Clock, case: Case) -> None:
    device, type_, data, location, rule, category, priority, teams = case
    svc = service(db, clock)
    await ingest(db, svc, event(device, type_, data, at=clock(), **location))
    [wo] = await work_orders(db)
    assert (wo.rule_id, wo.category, wo.priority, wo.teams) == (rule, category, priority, teams)
    assert (wo.site_id, wo.gateway_id, wo.device_id, wo.status) == (SITE, GATEWAY, device, "open")
    assert wo.location == (location or None)
    deadlines = svc.rules.rules[[r.id for r in svc.rules.rules].index(rule)].deadlines(
        svc.rules.priority_deadlines
    )
    assert wo.response_due == clock() + deadlines.response
    assert wo.resolution_due == clock() + deadlines.resolution


async def test_events_no_rule_wants_open_nothing(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    await ingest(
        db,
        svc,
        event("th-1", "sensor.threshold_exceeded", {"metric": "humidity"}, at=clock(), area="lobby"),
        event("meter-9", "meter.reading", {"power_w": 900}, at=clock()),
        event("gate-1", "gate.opened", at=clock()),
    )
    assert await work_orders(db) == []


async def test_fire_alarm_title_carries_zone(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    await ingest(
        db, svc, event("panel-1", "fire.alarm", {"zone": 3, "zone_name": "Block C lobby"}, at=clock())
    )
    [wo] = await work_orders(db)
    assert wo.title == "Fire alarm: zone 3 Block C lobby"
    assert (wo.condition_key, wo.data["zone"], wo.data["zone_name"]) == ("zone 3", 3, "Block C lobby")


async def test_repeats_attach_as_occurrences_and_restore_marks_cleared(any_db: Db, clock: Clock) -> None:
    db = any_db
    svc = service(db, clock)
    first = clock()
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3}, at=first))
    clock.advance(minutes=2)
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3}, at=clock()))
    clock.advance(minutes=1)
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3}, at=clock()))
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 5}, at=clock()))  # another condition
    zone3, zone5 = await work_orders(db)
    assert (zone3.occurrences, zone3.first_seen, zone3.last_seen) == (3, first, first + timedelta(minutes=3))
    assert zone5.occurrences == 1
    async with db.sessions() as s:
        count = len(
            list((await s.execute(select(Occurrence).where(Occurrence.work_order_id == zone3.id))).scalars())
        )
    assert count == 3

    clock.advance(minutes=5)
    await ingest(db, svc, event("panel-1", "fire.restored", {"zone": 3, "cleared": ["alarm"]}, at=clock()))
    zone3, zone5 = await work_orders(db)
    assert (zone3.cleared_at, zone3.cleared_by, zone3.status) == (clock(), "fire.restored", "open")
    assert zone5.cleared_at is None  # zone 5 still in alarm
    # People close it, not the rule: the condition coming back attaches to the same open work order.
    clock.advance(minutes=1)
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3}, at=clock()))
    zone3, _ = await work_orders(db)
    assert (zone3.occurrences, zone3.cleared_at) == (4, None)


async def test_sensor_normal_clears_its_metric_only(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    data = {"metric": "humidity", "value": 91, "bound": "max", "limit": 80}
    await ingest(db, svc, event("th-1", "sensor.threshold_exceeded", data, at=clock(), area="switch room"))
    await ingest(db, svc, event("th-1", "sensor.normal", {**data, "metric": "temperature"}, at=clock()))
    [wo] = await work_orders(db)
    assert wo.cleared_at is None
    await ingest(db, svc, event("th-1", "sensor.normal", {**data, "value": 70}, at=clock()))
    [wo] = await work_orders(db)
    assert wo.cleared_by == "sensor.normal"


async def test_missed_intercom_calls_open_only_when_repeated_within_the_window(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    t = clock()
    # Three missed calls, but spread over 25 minutes: never three within 10.
    for minutes in (0, 12, 24):
        await ingest(
            db, svc, event("door-station-1", "intercom.call_missed", at=t + timedelta(minutes=minutes))
        )
    assert await work_orders(db) == []
    for minutes in (40, 43, 46):
        await ingest(
            db, svc, event("door-station-1", "intercom.call_missed", at=t + timedelta(minutes=minutes))
        )
    [wo] = await work_orders(db)
    assert (wo.rule_id, wo.data["count"], wo.occurrences) == ("intercom-missed-calls", 3, 1)
    await ingest(db, svc, event("door-station-1", "intercom.call_missed", at=t + timedelta(minutes=47)))
    [wo] = await work_orders(db)
    assert wo.occurrences == 2


async def test_device_offline_longer_than_the_limit(any_db: Db, clock: Clock) -> None:
    db = any_db
    svc = service(db, clock)
    went = clock()
    await ingest(db, svc, event("cam-1", "device.offline", {"reason": "timeout"}, at=went, area="car park"))
    # Another device drops and comes back within the limit: never a work order.
    await ingest(db, svc, event("cam-2", "device.offline", at=went))
    clock.advance(minutes=14)
    await ingest(db, svc, event("cam-2", "device.online", at=clock()))
    assert (await svc.tick()).opened == []
    clock.set(went + timedelta(minutes=15))
    report = await svc.tick()
    [wo] = await work_orders(db)
    assert report.opened == [wo.id]
    assert (wo.rule_id, wo.device_id, wo.location, wo.data["reason"]) == (
        "device-offline",
        "cam-1",
        {"area": "car park"},
        "timeout",
    )
    assert (await svc.tick()).opened == []  # fires once
    clock.advance(minutes=3)
    await ingest(db, svc, event("cam-1", "device.online", at=clock()))
    [wo] = await work_orders(db)
    assert (wo.cleared_by, wo.status) == ("device.online", "open")


async def test_gateway_offline_longer_than_the_limit(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    await ingest(db, svc, event("gate-1", "gate.opened", at=clock()))  # the gateway row exists
    async with db.sessions() as s, s.begin():
        await s.execute(update(Gateway).values(online=False, last_seen=clock()))
    clock.advance(minutes=9)
    assert (await svc.tick()).opened == []
    clock.advance(minutes=2)
    [opened] = (await svc.tick()).opened
    assert (await svc.tick()).opened == []
    [wo] = await work_orders(db)
    assert (wo.id, wo.rule_id, wo.gateway_id, wo.device_id, wo.priority) == (
        opened,
        "gateway-offline",
        GATEWAY,
        None,
        "urgent",
    )
    async with db.sessions() as s, s.begin():
        await s.execute(update(Gateway).values(online=True, last_seen=clock()))
    assert (await svc.tick()).cleared == [wo.id]


async def test_water_flowing_all_night_opens_one_work_order(any_db: Db, clock: Clock) -> None:
    db = any_db
    svc = service(db, clock)
    zone = ZoneInfo("Asia/Shanghai")
    night = datetime(2026, 3, 3, 1, 0, tzinfo=zone)
    for half_hours in range(8):  # 01:00 .. 04:30, every half hour
        at = (night + timedelta(minutes=30 * half_hours)).astimezone(UTC)
        leak = 0.02 + 0.01 * (half_hours % 2)
        await ingest(
            db,
            svc,
            event("wm-leak", "meter.reading", {"flow_m3h": leak, "total_m3": 100}, at=at),
            event("wm-ok", "meter.reading", {"flow_m3h": 0.0 if half_hours == 5 else 0.4}, at=at),
        )
    clock.set(datetime(2026, 3, 3, 4, 59, tzinfo=zone).astimezone(UTC))
    assert (await svc.tick()).opened == []  # the night is not over
    clock.set(datetime(2026, 3, 3, 5, 0, 30, tzinfo=zone).astimezone(UTC))
    other = service(db, clock, instance="cloud-b")
    first, second = await svc.tick(), await other.tick()
    [wo] = await work_orders(db)
    assert first.opened + second.opened == [wo.id]
    assert (wo.rule_id, wo.device_id, wo.data["readings"], wo.data["min"]) == (
        "water-night-flow",
        "wm-leak",
        8,
        0.02,
    )
    assert (await svc.tick()).opened == []
