"""Rule and schedule files: the shipped ones load; a bad one fails whole, naming each problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from cloud.workorders import RulesError, load_plan, load_rules, parse_plan, parse_rules
from cloud.workorders.rules import Priority, RuleSet, event_fields, matches
from tests.workorders.support import event

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_shipped_rules_cover_the_issue_and_use_domain_deadlines() -> None:
    rules = load_rules(CONFIG / "rules.yaml")
    by_id = {r.id: r for r in rules.rules}
    assert {r.kind for r in rules.rules} == {"event", "repeated", "offline", "night"}
    wanted = [
        "fire.alarm", "fire.fault", "fire.panel_fault", "door.forced_open", "door.held_open", "gate.fault",
        "gate.obstructed", "sensor.threshold_exceeded", "meter.reading", "meter.tamper",
        "intercom.call_missed",
    ]  # fmt: skip
    for type_ in wanted:
        assert any(type_ in r.on for r in rules.rules), type_
    fire = by_id["fire-alarm"]
    assert (fire.priority, fire.teams) == (Priority.EMERGENCY, ["security", "engineering"])
    assert fire.deadlines(rules.priority_deadlines).response == timedelta(minutes=30)
    assert by_id["switch-room-humidity"].deadlines(rules.priority_deadlines).resolution == timedelta(hours=48)
    _, noise = rules.manual_deadlines("complaint.noise")
    _, facilities = rules.manual_deadlines("complaint.facilities")
    _, neighbour = rules.manual_deadlines("complaint.neighbour")
    assert [d.resolution.days for d in (noise, facilities, neighbour)] == [3, 5, 7]
    assert [lvl.notify for lvl in rules.escalation] == ["team", "supervisor", "manager"]
    plan = load_plan(CONFIG / "maintenance.yaml")
    assert {s.every for s in plan.schedules} == {"week", "month", "quarter"}


def test_a_bad_rule_file_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {id: a, title: A, on: [fire.alarm], category: fire, teams: [x], priority: asap}\n"
        "  - {id: b, title: B, kind: repeated, on: [intercom.call_missed], category: c, team: y}\n"
        "  - {id: c, title: C, on: [x.y], category: c, team: y, response: soon}\n"
        "  - {id: d, title: D, on: [x.y], category: c, team: y, where: {payload.x: 1}}\n"
    )
    with pytest.raises(RulesError) as info:
        load_rules(path)
    text = str(info.value)
    assert "rules.0.priority: Input should be 'emergency', 'urgent', 'normal' or 'low'" in text
    assert "rules.1: a repeated rule needs count, within" in text
    assert "rules.2.response: bad duration 'soon'" in text
    assert "rules.3.where: 'payload.x' must start with one of data" in text
    with pytest.raises(RulesError, match="duplicate rule id"):
        parse_rules({"rules": [{"id": "a", "title": "A", "on": ["x.y"], "category": "c", "team": "t"}] * 2})
    with pytest.raises(RulesError, match=r"day 30: a weekly schedule takes day 1\.\.7"):
        parse_plan({"schedules": [{"id": "s", "title": "S", "every": "week", "day": 30, "team": "t"}]})


def test_where_matches_data_and_location() -> None:
    rules = parse_rules(
        {
            "rules": [
                {
                    "id": "hum",
                    "title": "t",
                    "on": ["sensor.threshold_exceeded"],
                    "where": {"data.metric": "humidity", "location.area": {"contains": "Switch Room"}},
                    "category": "sensor",
                    "team": "engineering",
                }
            ]
        }
    )
    where = rules.rules[0].where
    at = datetime(2026, 1, 1, tzinfo=UTC)
    hit = event("s1", "sensor.threshold_exceeded", {"metric": "humidity"}, at=at, area="B2 switch room")
    other_room = event("s1", "sensor.threshold_exceeded", {"metric": "humidity"}, at=at, area="lobby")
    other_metric = event("s1", "sensor.threshold_exceeded", {"metric": "pressure"}, at=at, area="switch room")
    assert matches(where, event_fields("s", "g", hit))
    assert not matches(where, event_fields("s", "g", other_room))
    assert not matches(where, event_fields("s", "g", other_metric))


def test_schedule_periods() -> None:
    plan = parse_plan(
        {
            "schedules": [
                {"id": "w", "title": "W", "every": "week", "day": 1, "at": "08:30", "team": "t"},
                {"id": "q", "title": "Q", "every": "quarter", "day": 10, "at": "10:00", "team": "t"},
            ]
        }
    )
    week, quarter = plan.schedules
    zone = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 5, 20, 4, 0, tzinfo=UTC)  # Wednesday
    assert week.due(now, zone) == ("2026-W21", datetime(2026, 5, 18, 8, 30, tzinfo=zone))
    assert quarter.due(now, zone) == ("2026-Q2", datetime(2026, 4, 10, 10, 0, tzinfo=zone))


def test_a_sites_clock_an_override_first_then_its_own_config_then_the_default() -> None:
    rules = RuleSet(timezone="Asia/Shanghai", site_timezones={"oak-garden": "Europe/London"})
    assert rules.zone("oak-garden", "Asia/Tokyo").key == "Europe/London"
    assert rules.zone("pine-court", "Asia/Tokyo").key == "Asia/Tokyo"
    assert rules.zone("pine-court", None).key == "Asia/Shanghai"
    with pytest.raises(ValidationError, match="unknown time zone 'Asia/Shangai'"):
        RuleSet(timezone="Asia/Shangai")
