"""Deadlines and escalation on database timers: three levels, a signed webhook retried with backoff,
timers surviving a restart, and two instances on PostgreSQL escalating exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from sqlalchemy import func, select

from cloud.workorders import SIGNATURE_HEADER, verify
from cloud.workorders.tables import Escalation, Timer, WorkOrder
from tests.workorders.support import Clock, Db, Receiver, event, ingest, receiving, running_app, service

SECRET = "s3cret-shared-with-the-receiver"


async def escalations(db: Db) -> list[tuple[int, str, int, str]]:
    async with db.sessions() as s:
        rows = await s.execute(select(Escalation).order_by(Escalation.id))
        return [(e.work_order_id, e.deadline, e.level, e.notify) for e in rows.scalars()]


async def test_missed_response_escalates_through_three_levels_to_a_signed_retried_webhook(
    db: Db, clock: Clock
) -> None:
    async with receiving(Receiver(fail_first=2)) as receiver:
        svc = service(
            db,
            clock,
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            webhook_backoff_s=10,
            webhook_max_attempts=5,
        )
        opened = clock()
        await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 3, "zone_name": "Lobby"}, at=opened))
        clock.advance(minutes=29)
        assert (await svc.tick()).escalations == []
        clock.set(opened + timedelta(minutes=30))  # the 30-minute response promise is missed
        assert (await svc.tick()).escalations == [(1, "response", 1)]
        assert len(receiver.requests) == 1  # attempt 1: 503
        clock.advance(seconds=9)
        await svc.tick()
        assert len(receiver.requests) == 1  # backoff: not before 10 s
        clock.advance(seconds=1)
        await svc.tick()
        assert len(receiver.requests) == 2  # attempt 2: 503; next in 20 s
        clock.advance(seconds=19)
        await svc.tick()
        assert len(receiver.requests) == 2
        clock.advance(seconds=1)
        assert (await svc.tick()).delivered == 1
        assert len(receiver.requests) == 3

        clock.set(opened + timedelta(minutes=60))  # supervisor after another 30 minutes
        assert (await svc.tick()).escalations == [(1, "response", 2)]
        clock.set(opened + timedelta(minutes=150))  # manager after 2 hours
        assert (await svc.tick()).escalations == [(1, "response", 3)]
        assert (await svc.tick()).escalations == []
        clock.set(opened + timedelta(hours=4))  # and the 4-hour resolution deadline, level 1
        assert (await svc.tick()).escalations == [(1, "resolution", 1)]

    assert await escalations(db) == [
        (1, "response", 1, "team"),
        (1, "response", 2, "supervisor"),
        (1, "response", 3, "manager"),
        (1, "resolution", 1, "team"),
    ]
    bodies = [body for _, body in receiver.requests]
    for headers, body in receiver.requests:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER.lower()])
        assert not verify("wrong secret", body, headers[SIGNATURE_HEADER.lower()])
    # Retries resend the same delivery, byte for byte, with the same delivery id.
    assert bodies[0] == bodies[1] == bodies[2]
    assert {h["x-steward-delivery"] for h, _ in receiver.requests[:3]} == {
        receiver.requests[0][0]["x-steward-delivery"]
    }
    assert [h["x-steward-attempt"] for h, _ in receiver.requests[:3]] == ["1", "2", "3"]
    payloads = [json.loads(b) for b in bodies]
    assert [
        (p["escalation"]["deadline"], p["escalation"]["level"], p["escalation"]["notify"]) for p in payloads
    ] == [
        ("response", 1, "team"),
        ("response", 1, "team"),
        ("response", 1, "team"),
        ("response", 2, "supervisor"),
        ("response", 3, "manager"),
        ("resolution", 1, "team"),
    ]
    first = payloads[0]
    assert first["type"] == "work_order.escalated"
    assert first["work_order"]["priority"] == "emergency"
    assert first["work_order"]["teams"] == ["security", "engineering"]
    async with db.sessions() as s:
        wo = await s.get(WorkOrder, 1)
    assert wo is not None and wo.escalation_level == 3


async def test_acknowledging_in_time_stops_response_escalation(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, svc):
        await ingest(db, svc, event("door-1", "door.forced_open", at=clock()))
        clock.advance(minutes=10)
        r = await http.post("/api/v1/work-orders/1/transitions", json={"to": "acknowledged", "actor": "li"})
        assert r.status_code == 200, r.text
        clock.advance(hours=5)
        report = await svc.tick()
        # urgent: response 15 min (met), resolution 2 h (missed: team, then supervisor, then manager)
        assert report.escalations == [(1, "resolution", 1), (1, "resolution", 2), (1, "resolution", 3)]
        detail = (await http.get("/api/v1/work-orders/1")).json()
        assert [(e["deadline"], e["level"], e["notify"]) for e in detail["escalations"]] == [
            ("resolution", 1, "team"),
            ("resolution", 2, "supervisor"),
            ("resolution", 3, "manager"),
        ]
        assert detail["overdue"] is True and detail["response_left_s"] is None
        assert detail["resolution_left_s"] == -(3 * 3600 + 10 * 60)


async def test_timers_survive_a_cloud_restart(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, _):
        r = await http.post(
            "/api/v1/work-orders",
            json={
                "category": "enquiry",
                "site_id": "oak-garden",
                "apartment": "3-1502",
                "description": "Parking?",
            },
        )
        assert r.status_code == 201, r.text
        work_order = r.json()["id"]
    # The first cloud is gone; a new instance on the same database owns the timers now.
    clock.advance(hours=2, seconds=1)
    async with running_app(db, clock) as (http, svc):
        report = await svc.tick()
        assert report.escalations == [(work_order, "response", 1), (work_order, "resolution", 1)]
        detail = (await http.get(f"/api/v1/work-orders/{work_order}")).json()
        assert detail["escalation_level"] == 1 and detail["overdue"] is True


async def test_two_instances_on_postgresql_escalate_once(pg_db: Db) -> None:
    db = pg_db
    clock = Clock()
    a, b = service(db, clock, "cloud-a"), service(db, clock, "cloud-b")
    for zone in range(1, 21):  # 20 emergencies, 6 escalation timers each
        await ingest(db, a, event("panel-1", "fire.alarm", {"zone": zone}, at=clock()))
    clock.advance(hours=5)
    reports = await asyncio.gather(*(svc.tick() for svc in (a, b, a, b)))
    fired = [e for r in reports for e in r.escalations]
    assert len(fired) == len(set(fired)) == 20 * 5  # response 1-3, resolution 1-2 (4 h, 4.5 h)
    assert sorted(await escalations(db)) == sorted(
        (wo, d, lvl, n) for wo, d, lvl in fired for n in [{1: "team", 2: "supervisor", 3: "manager"}[lvl]]
    )
    async with db.sessions() as s:
        claimed = dict(
            (await s.execute(select(Timer.claimed_by, func.count()).group_by(Timer.claimed_by))).all()
        )
    assert sum(v for k, v in claimed.items() if k) == 20 * 5
