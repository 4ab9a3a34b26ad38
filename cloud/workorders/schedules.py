"""Planned maintenance (作业计划): recurring schedules and their periods. Pure: no I/O but the file read.

A schedule opens one work order per site per period, at ``day`` + ``at`` site time into the period::

    every: week     day = weekday 1 (Mon) .. 7        period key 2026-W09
    every: month    day = day of month 1 .. 28        period key 2026-03
    every: quarter  day = day of the quarter 1 .. 90  period key 2026-Q1
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud.workorders.rules import Duration, Priority, RulesError, TimeZone, _load_yaml, _team_alias, describe


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    title: str = Field(min_length=1, max_length=200)
    every: Literal["week", "month", "quarter"]
    day: int = Field(default=1, ge=1, le=90)
    at: str = Field(default="09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    sites: list[str] = Field(default_factory=list, description="Empty: every site the cloud knows")
    category: str = Field(default="maintenance", min_length=1, max_length=64)
    priority: Priority = Priority.NORMAL
    teams: list[str] = Field(min_length=1)
    response: Duration | None = None
    resolution: Duration | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _team(cls, value: Any) -> Any:
        return _team_alias(value)

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        limit = {"week": 7, "month": 28, "quarter": 90}[self.every]
        if self.day > limit:
            raise ValueError(f"day {self.day}: a {self.every}ly schedule takes day 1..{limit}")
        return self

    def period(self, local_day: date) -> tuple[str, date]:
        """The period containing ``local_day``: its key and its first day."""
        if self.every == "week":
            start = local_day - timedelta(days=local_day.weekday())
            iso = start.isocalendar()
            return f"{iso.year}-W{iso.week:02d}", start
        if self.every == "month":
            return f"{local_day.year}-{local_day.month:02d}", local_day.replace(day=1)
        quarter = (local_day.month - 1) // 3
        return f"{local_day.year}-Q{quarter + 1}", date(local_day.year, quarter * 3 + 1, 1)

    def due(self, now: datetime, zone: ZoneInfo) -> tuple[str, datetime]:
        """The current period's key and when its work order is due to open (UTC-aware)."""
        key, start = self.period(now.astimezone(zone).date())
        hour, minute = map(int, self.at.split(":"))
        local = datetime.combine(start + timedelta(days=self.day - 1), time(hour, minute), tzinfo=zone)
        return key, local


class MaintenancePlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: TimeZone | None = Field(default=None, description="Default: the rule file's time zone")
    schedules: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> MaintenancePlan:
        ids = [s.id for s in self.schedules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate schedule id(s): {', '.join(dupes)}")
        return self


def parse_plan(data: Any, path: Path | str = "<maintenance>") -> MaintenancePlan:
    try:
        return MaintenancePlan.model_validate(data)
    except ValidationError as exc:
        raise RulesError(describe(exc, Path(path))) from None


def load_plan(path: Path) -> MaintenancePlan:
    return parse_plan(_load_yaml(path), path)
