"""Work order report figures: pure functions over rows (counts, median/p90 times, deadline hit rates,
follow-up rate, satisfaction), and the CSV rendering."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from cloud.workorders.schemas import Durations, WorkOrderReport
from cloud.workorders.tables import WorkOrder


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``p`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def durations(values: list[float]) -> Durations:
    return Durations(
        count=len(values),
        median_s=statistics.median(values) if values else None,
        p90_s=percentile(values, 0.9),
    )


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def build(
    rows: Sequence[WorkOrder], now: datetime, site: str | None, start: datetime | None, end: datetime | None
) -> WorkOrderReport:
    live = [r for r in rows if r.status != "cancelled"]
    response = [(r.acknowledged_at - r.created_at).total_seconds() for r in live if r.acknowledged_at]
    resolution = [(r.resolved_at - r.created_at).total_seconds() for r in live if r.resolved_at]
    # A deadline is decided once it was met or has passed; open work orders still in time do not count.
    resp_decided = [r for r in live if r.acknowledged_at is not None or r.response_due <= now]
    resp_hits = [
        r for r in resp_decided if r.acknowledged_at is not None and r.acknowledged_at <= r.response_due
    ]
    res_decided = [r for r in live if r.resolved_at is not None or r.resolution_due <= now]
    res_hits = [r for r in res_decided if r.resolved_at is not None and r.resolved_at <= r.resolution_due]
    closed = [r for r in rows if r.status == "closed"]
    scores = [r.follow_up_satisfaction for r in closed if r.follow_up_satisfaction is not None]
    return WorkOrderReport.model_validate(
        {
            "site": site,
            "from": start,
            "to": end,
            "total": len(rows),
            "by_category": dict(sorted(Counter(r.category for r in rows).items())),
            "by_priority": dict(sorted(Counter(r.priority for r in rows).items())),
            "by_status": dict(sorted(Counter(r.status for r in rows).items())),
            "response": durations(response),
            "resolution": durations(resolution),
            "response_hit_rate": _rate(len(resp_hits), len(resp_decided)),
            "resolution_hit_rate": _rate(len(res_hits), len(res_decided)),
            "closed": len(closed),
            "follow_up_rate": _rate(sum(1 for r in closed if r.follow_up_reached), len(closed)),
            "mean_satisfaction": round(statistics.fmean(scores), 2) if scores else None,
        }
    )


def to_csv(report: WorkOrderReport) -> str:
    """One figure per row: ``metric,key,value`` (key names the category/priority/status where it applies)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "key", "value"])
    writer.writerow(["site", "", report.site or ""])
    writer.writerow(["from", "", report.from_.isoformat() if report.from_ else ""])
    writer.writerow(["to", "", report.to.isoformat() if report.to else ""])
    writer.writerow(["total", "", report.total])
    for metric, counts in (
        ("count_by_category", report.by_category),
        ("count_by_priority", report.by_priority),
        ("count_by_status", report.by_status),
    ):
        for key, value in counts.items():
            writer.writerow([metric, key, value])
    for name, d in (("response", report.response), ("resolution", report.resolution)):
        writer.writerow([f"{name}_count", "", d.count])
        writer.writerow([f"{name}_median_s", "", _num(d.median_s)])
        writer.writerow([f"{name}_p90_s", "", _num(d.p90_s)])
    writer.writerow(["response_hit_rate", "", _num(report.response_hit_rate)])
    writer.writerow(["resolution_hit_rate", "", _num(report.resolution_hit_rate)])
    writer.writerow(["closed", "", report.closed])
    writer.writerow(["follow_up_rate", "", _num(report.follow_up_rate)])
    writer.writerow(["mean_satisfaction", "", _num(report.mean_satisfaction)])
    return out.getvalue()


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)
