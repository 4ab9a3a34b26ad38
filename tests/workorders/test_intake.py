"""Events and conditions into work orders: a real database, the shipped rules, an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from cloud.tables import Device, Gateway
from cloud.workorders.tables import Occurrence, WorkOrder
from tests.cloud.support import make_batch
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


async def test_a_work_order_never_takes_its_location_from_another_sites_device(db: Db, clock: Clock) -> None:
    svc = service(db, clock)
    async with db.sessions() as session, session.begin():
        session.add(
            Device(
                id="panel-1", site_id="elm-court", gateway_id="gw-9", kind="fire_panel", model="x",
                location={"area": "Elm Court plant room"}, state={}, online=True, updated_at=clock(),
            )
        )  # fmt: skip
    await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3}, at=clock()))
    [wo] = await work_orders(db)
    assert (wo.site_id, wo.location) == (SITE, None)


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


async def test_restore_events_with_nothing_open_do_not_take_the_write_lock(db: Db, clock: Clock) -> None:
    """Every gate movement clears "gate fault": with no such work order open it must not queue on
    SQLite's write lock (an operator's command result would queue behind it), and once one is open the
    same event still clears it."""
    svc = service(db, clock)
    restores = [event("gate-1", "gate.opened", at=clock()), event("gate-1", "gate.closed", at=clock())]
    batch = make_batch(restores, site=SITE, gateway=GATEWAY)
    async with db.sessions() as holder, holder.begin():
        await holder.execute(update(Gateway).values(clock_skewed=False))  # holds the write lock
        await asyncio.wait_for(svc.on_events(batch, restores), 2)
    assert await work_orders(db) == []

    await ingest(db, svc, event("gate-1", "gate.fault", {"state": "fault"}, at=clock()))
    clock.advance(minutes=1)
    await ingest(db, svc, event("gate-1", "gate.opened", at=clock()))
    [wo] = await work_orders(db)
    assert (wo.rule_id, wo.cleared_by, wo.cleared_at) == ("gate-fault", "gate.opened", clock())


async def test_events_said_to_only_clear_never_open_or_start_anything(db: Db, clock: Clock) -> None:
    """clear_keys_only() must be conservative: an event it calls clear-only, stored and handled as
    ingest does (the full path, handle_event), adds no work order, occurrence or timer. Checked for
    every event type the shipped rules name, with data that matches their conditions where it can."""
    from cloud.workorders import intake
    from cloud.workorders.rules import event_fields
    from cloud.workorders.tables import Timer

    svc = service(db, clock)
    types = {"device.online", "device.offline"}
    for rule in svc.rules.rules:
        types |= set(rule.on) | set(rule.clear.on if rule.clear else ())

    async def rows() -> list[int]:
        async with db.sessions() as s:
            return [len((await s.execute(select(t))).all()) for t in (WorkOrder, Occurrence, Timer)]

    data = {"zone": 1, "metric": "humidity", "value": 99, "bound": "max", "limit": 80, "power_w": 99000}
    clear_only = set()
    for type_ in sorted(types):
        e = event("dev-1", type_, data, at=clock())
        keys = intake.clear_keys_only(svc.rules, event_fields(SITE, GATEWAY, e), "dev-1")
        before = await rows()
        async with db.sessions() as session, session.begin():
            await intake.handle_event(
                session, svc.rules, site_id=SITE, gateway_id=GATEWAY, event=e, now=clock()
            )
        if keys is not None:
            clear_only.add(type_)
            assert await rows() == before, f"{type_} is not clear-only"
        clock.advance(minutes=1)
    # The common restores are on the read-only path.
    assert {"gate.opened", "gate.closed", "fire.restored", "sensor.normal"} <= clear_only
    assert "gate.fault" not in clear_only and "device.offline" not in clear_only
