"""The work order report on a known data set: counts, median/p90 times, hit rates, follow-up (JSON, CSV)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import httpx

from tests.workorders.support import T0, Clock, Db, event, ingest, running_app


async def make(http: httpx.AsyncClient, **body: Any) -> int:
    r = await http.post("/api/v1/work-orders", json={"site_id": "oak-garden", "description": "d", **body})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def move(http: httpx.AsyncClient, wo: int, to: str, **body: Any) -> None:
    r = await http.post(f"/api/v1/work-orders/{wo}/transitions", json={"to": to, **body})
    assert r.status_code == 200, r.text


async def test_report_figures_on_a_known_data_set(db: Db, clock: Clock) -> None:
    async with running_app(db, clock) as (http, svc):
        # Five repairs at T0 (response 2 h, resolution 24 h), acknowledged after 10, 20, 30, 40, 180
        # minutes and resolved after 1, 2, 3, 4, 30 hours.
        repairs = [await make(http, category="repair", apartment=f"1-{n}") for n in range(5)]
        acks = [10, 20, 30, 40, 180]
        fixes = [1, 2, 3, 4, 30]
        events: list[tuple[timedelta, int, str, dict[str, Any]]] = []
        for wo, ack, fix in zip(repairs, acks, fixes, strict=True):
            events.append((timedelta(minutes=ack), wo, "acknowledged", {}))
            events.append((timedelta(minutes=ack, seconds=1), wo, "assigned", {"assignee": "eng"}))
            events.append((timedelta(minutes=ack, seconds=2), wo, "in_progress", {}))
            events.append((timedelta(hours=fix), wo, "resolved", {}))
        for at, wo, to, body in sorted(events, key=lambda e: (e[0], e[1])):
            clock.set(T0 + at)
            await move(http, wo, to, **body)
        clock.set(T0 + timedelta(hours=31))
        closes = [
            (repairs[0], True, 5),
            (repairs[1], True, 4),
            (repairs[2], False, None),
            (repairs[3], True, 3),
        ]
        for wo, reached, score in closes:
            await move(http, wo, "closed", follow_up={"reached": reached, "satisfaction": score})
        # A complaint still within its 3 days, a cancelled enquiry, and a fire alarm at another site.
        clock.set(T0)
        await make(http, category="complaint", complaint_type="noise", apartment="5-101")
        cancelled = await make(http, category="enquiry")
        await move(http, cancelled, "cancelled")
        await ingest(db, svc, event("panel-1", "fire.alarm", {"zone": 2}, at=clock()), site="pine-court")
        clock.set(T0 + timedelta(hours=31))

        params = {"site": "oak-garden", "from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"}
        report = (await http.get("/api/v1/reports/work-orders", params=params)).json()
        assert report == {
            "site": "oak-garden",
            "from": "2026-03-01T00:00:00Z",
            "to": "2026-03-03T00:00:00Z",
            "total": 7,
            "by_category": {"complaint.noise": 1, "enquiry": 1, "repair": 5},
            "by_priority": {"normal": 7},
            "by_status": {"cancelled": 1, "closed": 4, "open": 1, "resolved": 1},
            "response": {"count": 5, "median_s": 1800.0, "p90_s": 10800.0},
            "resolution": {"count": 5, "median_s": 10800.0, "p90_s": 108000.0},
            # response: 4 of 5 within 2 h (the open complaint's 2 h response is past and unmet: 4 of 6)
            "response_hit_rate": round(4 / 6, 4),
            "resolution_hit_rate": 0.8,  # 4 of 5 within 24 h; the complaint has 3 days
            "closed": 4,
            "follow_up_rate": 0.75,
            "mean_satisfaction": 4.0,
        }
        everything = (await http.get("/api/v1/reports/work-orders")).json()
        assert everything["total"] == 8 and everything["by_priority"] == {"emergency": 1, "normal": 7}

        r = await http.get("/api/v1/reports/work-orders", params={**params, "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == ["metric", "key", "value"]
        figures = {(m, k): v for m, k, v in rows[1:]}
        assert figures[("total", "")] == "7"
        assert figures[("count_by_category", "repair")] == "5"
        assert figures[("count_by_priority", "normal")] == "7"
        assert figures[("response_median_s", "")] == "1800"
        assert figures[("resolution_p90_s", "")] == "108000"
        assert figures[("response_hit_rate", "")] == str(round(4 / 6, 4))
        assert figures[("follow_up_rate", "")] == "0.75"
        assert figures[("mean_satisfaction", "")] == "4"
