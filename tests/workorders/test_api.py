"""The work order API over HTTP (the real app, ASGI): manual work orders, the lifecycle with its 409s and
follow-up, listing with filters and cursor paging."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from tests.workorders.support import Clock, Db, event, ingest, running_app


async def manual(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await http.post(
        "/api/v1/work-orders", json={"site_id": "oak-garden", "description": "leaking tap", **body}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def move(http: httpx.AsyncClient, wo: int, **body: Any) -> httpx.Response:
    return await http.post(f"/api/v1/work-orders/{wo}/transitions", json=body)


async def test_phone_requests_get_their_category_deadlines(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, _):
        repair = await manual(http, category="repair", apartment="3-2-1502", contact="Ms Wang 138...")
        enquiry = await manual(http, category="enquiry", description="When is the water off?")
        noise = await manual(http, category="complaint", complaint_type="noise", apartment="5-1-201")
        facilities = await manual(http, category="complaint", complaint_type="facilities", building="7")
        neighbour = await manual(http, category="complaint", complaint_type="neighbour", apartment="5-1-301")
        created = clock()
        assert (repair["category"], repair["apartment"], repair["teams"]) == (
            "repair",
            "3-2-1502",
            ["engineering"],
        )
        assert repair["title"] == "Repair: 3-2-1502" and repair["data"] == {"contact": "Ms Wang 138..."}
        assert repair["history"] == [
            {
                "from_status": None,
                "to_status": "open",
                "actor": "wo-admin",  # the caller, not the body's "actor"
                "note": None,
                "at": repair["created_at"],
            }
        ]
        due = {
            wo["category"]: (wo["response_due"], wo["resolution_due"])
            for wo in (repair, enquiry, noise, facilities, neighbour)
        }

        def iso(d: timedelta) -> str:
            return (created + d).isoformat().replace("+00:00", "Z")

        assert {k: v[1] for k, v in due.items()} == {
            "repair": iso(timedelta(hours=24)),
            "enquiry": iso(timedelta(hours=2)),
            "complaint.noise": iso(timedelta(days=3)),
            "complaint.facilities": iso(timedelta(days=5)),
            "complaint.neighbour": iso(timedelta(days=7)),
        }
        assert due["enquiry"][0] == iso(timedelta(hours=2))
        r = await http.post(
            "/api/v1/work-orders", json={"site_id": "s", "category": "complaint", "description": "x"}
        )
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "invalid_request"
        assert "complaint_type" in r.json()["error"]["message"]


async def test_lifecycle_to_closed_with_follow_up_and_history(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, _):
        wo = (await manual(http, category="repair", apartment="3-2-1502"))["id"]
        steps: list[dict[str, Any]] = [
            {"to": "acknowledged", "actor": "agent.zhao"},
            {"to": "assigned", "actor": "agent.zhao", "assignee": "eng.liu"},
            {"to": "in_progress", "actor": "eng.liu"},
            {"to": "resolved", "actor": "eng.liu", "note": "washer replaced"},
            {
                "to": "closed",
                "actor": "butler.chen",
                "follow_up": {"reached": True, "satisfaction": 5, "comment": "quick and tidy"},
            },
        ]
        for step in steps:
            clock.advance(minutes=20)
            r = await move(http, wo, **step)
            assert r.status_code == 200, r.text
        detail = r.json()
        assert (detail["status"], detail["assignee"]) == ("closed", "eng.liu")
        assert (
            detail["follow_up_reached"],
            detail["follow_up_satisfaction"],
            detail["follow_up_comment"],
        ) == (
            True,
            5,
            "quick and tidy",
        )
        # The actor is whoever holds the token; an "actor" in the body is ignored.
        assert [(h["from_status"], h["to_status"], h["actor"], h["note"]) for h in detail["history"]] == [
            (None, "open", "wo-admin", None),
            ("open", "acknowledged", "wo-admin", None),
            ("acknowledged", "assigned", "wo-admin", "assigned to eng.liu"),
            ("assigned", "in_progress", "wo-admin", None),
            ("in_progress", "resolved", "wo-admin", "washer replaced"),
            ("resolved", "closed", "wo-admin", None),
        ]
        assert detail["response_left_s"] is None and detail["overdue"] is False


async def test_invalid_transition_is_409_naming_the_allowed_ones(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, _):
        wo = (await manual(http, category="repair", apartment="1-101"))["id"]
        r = await move(http, wo, to="resolved")
        assert r.status_code == 409
        assert r.json() == {
            "error": {
                "code": "invalid_transition",
                "message": f"work order {wo} is open: cannot move to resolved; "
                "allowed: acknowledged, cancelled",
            }
        }
        assert (await move(http, wo, to="acknowledged")).status_code == 200
        r = await move(http, wo, to="assigned")
        assert r.status_code == 422 and r.json()["error"]["message"] == "assigning needs an assignee"
        for step in ({"to": "assigned", "assignee": "eng.liu"}, {"to": "in_progress"}, {"to": "resolved"}):
            assert (await move(http, wo, **step)).status_code == 200
        r = await move(http, wo, to="closed")
        assert r.status_code == 422 and r.json()["error"]["code"] == "transition_incomplete"
        assert (await move(http, wo, to="closed", follow_up={"reached": False})).status_code == 200
        r = await move(http, wo, to="cancelled")
        assert r.status_code == 409
        assert r.json()["error"]["message"] == (
            f"work order {wo} is closed: cannot move to cancelled; allowed: none (it is final)"
        )
        r = await move(http, wo, to="reopened")
        assert r.status_code == 422
        assert (await move(http, 999, to="acknowledged")).status_code == 404


async def test_closing_lets_the_condition_open_a_new_work_order(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, svc):
        await ingest(db, svc, event("gate-1", "gate.fault", at=clock()))
        first = (await http.get("/api/v1/work-orders")).json()["items"][0]["id"]
        assert (await move(http, first, to="cancelled", note="false alarm")).status_code == 200
        clock.advance(minutes=1)
        await ingest(db, svc, event("gate-1", "gate.fault", at=clock()))
        items = (await http.get("/api/v1/work-orders", params={"status": "open"})).json()["items"]
        assert [i["id"] for i in items] == [first + 1]


async def test_list_filters_and_cursor_paging(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, svc):
        for n in range(5):
            await manual(http, category="repair", apartment=f"1-{n}")
        await manual(http, category="enquiry", site_id="pine-court")
        await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 1}, at=clock()))
        page = (await http.get("/api/v1/work-orders", params={"category": "repair", "limit": 2})).json()
        seen = [i["id"] for i in page["items"]]
        while page["next_cursor"]:
            page = (
                await http.get(
                    "/api/v1/work-orders",
                    params={"category": "repair", "limit": 2, "cursor": page["next_cursor"]},
                )
            ).json()
            seen += [i["id"] for i in page["items"]]
        assert seen == [5, 4, 3, 2, 1]
        emergency = (await http.get("/api/v1/work-orders", params={"priority": "emergency"})).json()["items"]
        assert [(i["category"], i["rule_id"]) for i in emergency] == [("fire", "fire-alarm")]
        pine = (await http.get("/api/v1/work-orders", params={"site": "pine-court"})).json()["items"]
        assert [i["category"] for i in pine] == ["enquiry"]
        r = await http.get("/api/v1/work-orders", params={"cursor": "nonsense!"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_cursor")
        detail = (await http.get(f"/api/v1/work-orders/{emergency[0]['id']}")).json()
        assert detail["response_left_s"] == 30 * 60 and detail["overdue"] is False
        assert [o["event_type"] for o in detail["recent_occurrences"]] == ["fire.alarm"]
        clock.advance(minutes=31)
        detail = (await http.get(f"/api/v1/work-orders/{emergency[0]['id']}")).json()
        assert detail["response_left_s"] == -60 and detail["overdue"] is True
