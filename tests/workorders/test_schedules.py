"""Planned maintenance: on time, once per site and period, even with two instances ticking at once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from cloud.store import apply_status
from cloud.workorders import parse_plan
from cloud.workorders.tables import WorkOrder
from protocol import GatewayStatus
from tests.workorders.support import Clock, Db, event, ingest, service

SHANGHAI = ZoneInfo("Asia/Shanghai")
PLAN = parse_plan(
    {
        "schedules": [
            {
                "id": "extinguishers",
                "title": "Monthly fire extinguisher check",
                "every": "month",
                "day": 1,
                "at": "09:00",
                "team": "engineering",
                "category": "maintenance.fire",
                "resolution": "5d",
            },
            {
                "id": "lifts",
                "title": "Weekly lift inspection",
                "every": "week",
                "day": 1,
                "at": "08:30",
                "sites": ["oak-garden"],
                "team": "engineering",
                "category": "maintenance.lift",
            },
        ]
    }
)


async def planned(db: Db) -> list[tuple[str | None, str, str]]:
    async with db.sessions() as s:
        rows = await s.execute(select(WorkOrder).where(WorkOrder.source == "schedule").order_by(WorkOrder.id))
        return [(w.site_id, w.title, w.created_by) for w in rows.scalars()]


async def test_a_schedule_opens_exactly_one_work_order_per_period(any_db: Db) -> None:
    db = any_db
    clock = Clock(datetime(2026, 4, 1, 8, 59, tzinfo=SHANGHAI))  # a Wednesday
    a, b = service(db, clock, "cloud-a", plan=PLAN), service(db, clock, "cloud-b", plan=PLAN)
    for site in ("oak-garden", "pine-court"):  # the sites the cloud knows
        await ingest(db, a, event("gate-1", "gate.opened", at=clock()), site=site, gateway=f"gw-{site}")
    await asyncio.gather(a.tick(), b.tick())
    # This week's lift inspection (Monday 08:30) is already due; April's extinguisher check is not yet.
    assert await planned(db) == [("oak-garden", "Weekly lift inspection (2026-W14)", "schedule:lifts")]
    clock.set(datetime(2026, 4, 1, 9, 0, tzinfo=SHANGHAI))
    for _ in range(3):
        await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
    assert sorted(await planned(db))[:2] == [
        ("oak-garden", "Monthly fire extinguisher check (2026-04)", "schedule:extinguishers"),
        ("oak-garden", "Weekly lift inspection (2026-W14)", "schedule:lifts"),
    ]
    assert len(await planned(db)) == 3  # and pine-court's extinguisher check
    # A new instance (a restart) in the same period opens nothing again.
    c = service(db, clock, "cloud-c", plan=PLAN)
    assert (await c.tick()).opened == []
    clock.set(datetime(2026, 4, 6, 8, 30, tzinfo=SHANGHAI))  # next Monday
    await asyncio.gather(a.tick(), b.tick())
    assert (await planned(db))[-1] == ("oak-garden", "Weekly lift inspection (2026-W15)", "schedule:lifts")
    assert len(await planned(db)) == 4
    async with db.sessions() as s:
        wo = await s.scalar(select(WorkOrder).where(WorkOrder.title.like("Monthly%")).limit(1))
    assert wo is not None and wo.resolution_due - wo.created_at == timedelta(days=5)
    assert wo.data == {"schedule": "extinguishers", "period": "2026-04"}


async def test_each_site_keeps_its_own_clock_as_its_gateways_report_it(any_db: Db) -> None:
    """The monthly check is due at 09:00 on the 1st where the estate is: an estate whose site config says
    Asia/Tokyo gets it an hour before one on Shanghai time, and an override in the rules beats both."""
    db = any_db
    tokyo = ZoneInfo("Asia/Tokyo")
    clock = Clock(datetime(2026, 4, 1, 8, 59, tzinfo=tokyo))
    monthly = {"id": "extinguishers", "title": "Monthly fire extinguisher check", "every": "month", "day": 1}
    plan = parse_plan(
        {"schedules": [{**monthly, "at": "09:00", "team": "engineering", "category": "maintenance.fire"}]}
    )
    svc = service(db, clock, plan=plan)
    for site, zone in (("oak-garden", "Asia/Shanghai"), ("pine-court", "Asia/Tokyo"), ("elm-court", None)):
        await ingest(db, svc, event("gate-1", "gate.opened", at=clock()), site=site, gateway=f"gw-{site}")
        status = GatewayStatus(site_id=site, gateway_id=f"gw-{site}", online=True, at=clock(), timezone=zone)
        async with db.sessions() as s, s.begin():
            await apply_status(s, status, clock())
    assert await svc.tick() is not None and await planned(db) == []
    clock.set(datetime(2026, 4, 1, 9, 0, tzinfo=tokyo))
    await svc.tick()
    assert [site for site, _, _ in await planned(db)] == ["pine-court"]
    clock.set(datetime(2026, 4, 1, 9, 0, tzinfo=SHANGHAI))  # no zone reported: the rules' default
    await svc.tick()
    assert sorted(site for site, _, _ in await planned(db)) == ["elm-court", "oak-garden", "pine-court"]
