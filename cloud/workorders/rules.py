"""Rules that turn events and conditions into work orders: pydantic models, YAML loading and matching.

Pure: no I/O beyond reading the file in :func:`load_rules`. A rule file is validated whole at start-up
(unknown keys, bad durations, duplicate rule ids, unknown time zones all fail with the rule named).

Rule kinds::

    event     open on each matching event (fire.alarm, door.forced_open, meter.tamper, ...)
    repeated  open when ``count`` matching events from one device fall within ``within``
    offline   a device (after ``device.offline``) or gateway (its row) offline for longer than ``after``
    night     a reading point above zero for every reading between ``start`` and ``end`` site time
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from protocol.models import Event, TimeZoneName

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """``"30m"``, ``"2h"``, ``"3d"``, ``"1w"``, ``"90s"`` or a number of seconds -> :class:`timedelta`."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30m, 2h, 3d")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"bad duration {value!r}: use a number of seconds or e.g. 90s, 30m, 2h, 3d, 1w")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


TimeZone = TimeZoneName


class Priority(StrEnum):
    EMERGENCY = "emergency"
    URGENT = "urgent"
    NORMAL = "normal"
    LOW = "low"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Deadlines(_Strict):
    response: Duration = Field(description="Acknowledged (on site, answered) within")
    resolution: Duration = Field(description="Resolved within")


# From docs/shared/domain.md: emergency on site within 30 min; urgent electrical/leak repairs 2 h with a
# 15 min answer; ordinary repair 24 h; minor fabric repairs 48 h.
DEFAULT_DEADLINES: dict[Priority, Deadlines] = {
    Priority.EMERGENCY: Deadlines(response=timedelta(minutes=30), resolution=timedelta(hours=4)),
    Priority.URGENT: Deadlines(response=timedelta(minutes=15), resolution=timedelta(hours=2)),
    Priority.NORMAL: Deadlines(response=timedelta(hours=2), resolution=timedelta(hours=24)),
    Priority.LOW: Deadlines(response=timedelta(hours=24), resolution=timedelta(hours=48)),
}


class Condition(_Strict):
    """One field test. A bare scalar in ``where`` means ``eq``."""

    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    contains: str | None = Field(default=None, description="Case-insensitive substring")
    exists: bool | None = None

    def test(self, value: Any) -> bool:
        if self.exists is not None and (value is not None) != self.exists:
            return False
        if self.eq is not None and not _equal(value, self.eq):
            return False
        if self.ne is not None and _equal(value, self.ne):
            return False
        if self.in_ is not None and not any(_equal(value, v) for v in self.in_):
            return False
        if self.contains is not None and (
            not isinstance(value, str) or self.contains.lower() not in value.lower()
        ):
            return False
        bounds = (
            (self.gt, float.__gt__),
            (self.gte, float.__ge__),
            (self.lt, float.__lt__),
            (self.lte, float.__le__),
        )
        for limit, op in bounds:
            if limit is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if not op(float(value), float(limit)):
                return False
        return True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b) or (a is not None and str(a) == str(b))


def _condition(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    return {"eq": value}


FieldCondition = Annotated[Condition, BeforeValidator(_condition)]
FIELD_ROOTS = ("data", "location", "device_id", "type", "site_id", "gateway_id")


def _check_where(where: dict[str, Any]) -> dict[str, Any]:
    for path in where:
        if path.split(".", 1)[0] not in FIELD_ROOTS:
            raise ValueError(f"{path!r} must start with one of {', '.join(FIELD_ROOTS)}")
    return where


Where = Annotated[dict[str, FieldCondition], BeforeValidator(lambda v: _check_where(v or {}))]


def event_fields(site_id: str, gateway_id: str, event: Event) -> dict[str, Any]:
    """What ``where`` paths and templates see for one event."""
    return {
        "site_id": site_id,
        "gateway_id": gateway_id,
        "device_id": event.device_id,
        "type": event.type,
        "data": dict(event.data),
        "location": event.location.model_dump(exclude_none=True) if event.location else {},
    }


def lookup(fields: dict[str, Any], path: str) -> Any:
    value: Any = fields
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(where: dict[str, Condition], fields: dict[str, Any]) -> bool:
    return all(cond.test(lookup(fields, path)) for path, cond in where.items())


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, fields: dict[str, Any]) -> str:
    """``"{zone_name} (zone {zone})"`` with data fields, ``{device_id}``, ``{location.area}`` etc.;
    a missing field renders empty."""
    flat: dict[str, Any] = {**fields.get("data", {})}
    for key in ("site_id", "gateway_id", "device_id", "type"):
        if key in fields:
            flat[key] = fields[key]
    for key, value in (fields.get("location") or {}).items():
        flat[f"location.{key}"] = value
    try:
        return re.sub(r"\{([A-Za-z0-9_.]+)\}", lambda m: str(_Blank(flat)[m.group(1)]), template).strip()
    except (KeyError, ValueError, IndexError):
        return template


def _team_alias(value: Any) -> Any:
    """``team: engineering`` is short for ``teams: [engineering]``."""
    if isinstance(value, dict) and "team" in value:
        value = dict(value)
        team = value.pop("team")
        value.setdefault("teams", [team] if isinstance(team, str) else team)
    return value


class Clear(_Strict):
    """Which events mark the condition cleared on an open work order (same device and key)."""

    on: list[str] = Field(min_length=1)
    where: Where = Field(default_factory=dict)


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    title: str = Field(min_length=1, max_length=200, description="Template: {zone_name}, {device_id}...")
    kind: Literal["event", "repeated", "offline", "night"] = "event"
    on: list[str] = Field(default_factory=list, description="Event types (event, repeated)")
    where: Where = Field(default_factory=dict)
    key: str = Field(default="", max_length=200, description="Template: what makes two conditions differ")
    category: str = Field(min_length=1, max_length=64)
    priority: Priority = Priority.NORMAL
    teams: list[str] = Field(min_length=1)
    response: Duration | None = None
    resolution: Duration | None = None
    clear: Clear | None = None
    # repeated
    count: int | None = Field(default=None, ge=2)
    within: Duration | None = None
    # offline
    target: Literal["device", "gateway"] | None = None
    after: Duration | None = None
    # night
    point: str | None = Field(default=None, description="Reading point, e.g. flow_m3h")
    start: str = Field(default="01:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(default="05:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    min_readings: int = Field(default=3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _team(cls, value: Any) -> Any:
        return _team_alias(value)

    @model_validator(mode="after")
    def _check(self) -> Rule:
        need: dict[str, list[str]] = {
            "event": ["on"],
            "repeated": ["on", "count", "within"],
            "offline": ["target", "after"],
            "night": ["point"],
        }
        missing = [name for name in need[self.kind] if not getattr(self, name)]
        if missing:
            raise ValueError(f"a {self.kind} rule needs {', '.join(missing)}")
        if self.kind == "night" and self.start >= self.end:
            raise ValueError("night: start must be before end (same night, e.g. 01:00 to 05:00)")
        return self

    def deadlines(self, defaults: dict[Priority, Deadlines]) -> Deadlines:
        base = defaults[self.priority]
        return Deadlines(
            response=self.response or base.response, resolution=self.resolution or base.resolution
        )

    def clears(self, fields: dict[str, Any]) -> bool:
        if self.kind == "offline" and self.target == "device" and fields.get("type") == "device.online":
            return True
        return (
            self.clear is not None
            and fields.get("type") in self.clear.on
            and matches(self.clear.where, fields)
        )

    def condition_key(self, fields: dict[str, Any]) -> str:
        return render(self.key, fields) if self.key else ""


class EscalationLevel(_Strict):
    notify: str = Field(min_length=1, max_length=64, description="team, supervisor, manager...")
    after: Duration = Field(description="After the missed deadline")


DEFAULT_LEVELS = (
    EscalationLevel(notify="team", after=timedelta(0)),
    EscalationLevel(notify="supervisor", after=timedelta(minutes=30)),
    EscalationLevel(notify="manager", after=timedelta(hours=2)),
)


class ManualCategory(_Strict):
    priority: Priority = Priority.NORMAL
    teams: list[str] = Field(min_length=1)
    response: Duration | None = None
    resolution: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _team(cls, value: Any) -> Any:
        return _team_alias(value)


DEFAULT_MANUAL: dict[str, ManualCategory] = {
    "repair": ManualCategory(priority=Priority.NORMAL, teams=["engineering"], resolution=timedelta(hours=24)),
    "enquiry": ManualCategory(
        priority=Priority.NORMAL,
        teams=["customer_service"],
        response=timedelta(hours=2),
        resolution=timedelta(hours=2),
    ),
    "complaint.noise": ManualCategory(teams=["customer_service"], resolution=timedelta(days=3)),
    "complaint.facilities": ManualCategory(teams=["customer_service"], resolution=timedelta(days=5)),
    "complaint.neighbour": ManualCategory(teams=["customer_service"], resolution=timedelta(days=7)),
}


class RuleSet(_Strict):
    timezone: TimeZone = Field(default="Asia/Shanghai", description="Site time for night rules, schedules")
    site_timezones: dict[str, TimeZone] = Field(default_factory=dict)
    deadlines: dict[Priority, Deadlines] = Field(default_factory=dict)
    escalation: list[EscalationLevel] = Field(default_factory=lambda: list(DEFAULT_LEVELS), min_length=1)
    manual: dict[str, ManualCategory] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> RuleSet:
        seen: set[str] = set()
        dupes = [r.id for r in self.rules if r.id in seen or seen.add(r.id)]  # type: ignore[func-returns-value]
        if dupes:
            raise ValueError(f"duplicate rule id(s): {', '.join(dupes)}")
        afters = [lvl.after for lvl in self.escalation]
        if afters != sorted(afters):
            raise ValueError("escalation: each level's 'after' must not be shorter than the one before")
        return self

    @property
    def priority_deadlines(self) -> dict[Priority, Deadlines]:
        return {**DEFAULT_DEADLINES, **self.deadlines}

    @property
    def manual_categories(self) -> dict[str, ManualCategory]:
        return {**DEFAULT_MANUAL, **self.manual}

    def manual_deadlines(self, category: str) -> tuple[ManualCategory, Deadlines]:
        cat = self.manual_categories[category]
        base = self.priority_deadlines[cat.priority]
        return cat, Deadlines(
            response=cat.response or base.response, resolution=cat.resolution or base.resolution
        )

    def zone(self, site_id: str | None, reported: str | None = None) -> ZoneInfo:
        """The site's time: an override here (``site_timezones``) first, then the zone its own config
        names (``reported`` by its gateways), then the default."""
        return ZoneInfo(self.site_timezones.get(site_id or "") or reported or self.timezone)

    def index(self) -> RuleIndex:
        """:meth:`relevant` by event type, for ingest (build once, ask per event)."""
        return RuleIndex(self.rules)

    def relevant(self, fields: dict[str, Any]) -> bool:
        """Whether any rule opens, attaches, clears or starts a timer on this event (no I/O)."""
        for rule in self.rules:
            if rule.clears(fields):
                return True
            if rule.kind == "offline":
                if rule.target == "device" and fields.get("type") == "device.offline":
                    return True
                continue
            if fields.get("type") in rule.on and matches(rule.where, fields):
                return True
        return False

    def event_types(self) -> set[str]:
        """Every event type some rule opens, attaches or clears on (a fast filter for ingest)."""
        types: set[str] = set()
        for rule in self.rules:
            types.update(rule.on)
            if rule.clear:
                types.update(rule.clear.on)
            if rule.kind == "offline" and rule.target == "device":
                types.update({"device.offline", "device.online"})
        return types


class _FieldTest:
    """One ``where`` entry, ready to test an event directly: what :func:`lookup` would find at its path
    in :func:`event_fields`, then :meth:`Condition.test`."""

    __slots__ = ("cond", "data_key", "if_missing", "path")

    def __init__(self, path: str, cond: Condition) -> None:
        self.path = path
        self.cond = cond
        root, _, rest = path.partition(".")
        self.data_key = rest if root == "data" and rest and "." not in rest else None
        # The test is pure: its answer for an absent field (None) is the same for every event.
        self.if_missing = cond.test(None)


class RuleIndex:
    """:meth:`RuleSet.relevant` by event type, asked of an :class:`Event` without building its
    :func:`event_fields`. Ingest asks it for every new event, most of them readings no rule cares
    about: an event type no rule names costs one dict lookup, and a ``where`` on one data field reads
    the event's own data. Plain attributes on purpose: a pydantic private attribute costs a
    ``__getattr__`` call per read, more than the whole test."""

    __slots__ = ("by_type",)

    def __init__(self, rules: list[Rule]) -> None:
        # Per event type, one list of tests per way RuleSet.relevant can answer yes (all must pass; an
        # empty list always does). Mirrors Rule.clears and RuleSet.relevant.
        self.by_type: dict[str, list[list[_FieldTest]]] = {}
        for rule in rules:
            if rule.kind == "offline" and rule.target == "device":
                self._add("device.online", {})  # clears
                self._add("device.offline", {})  # starts the timer
            if rule.clear is not None:
                for event_type in rule.clear.on:
                    self._add(event_type, rule.clear.where)
            if rule.kind == "offline":
                continue
            for event_type in rule.on:
                self._add(event_type, rule.where)

    def _add(self, event_type: str, where: dict[str, Condition]) -> None:
        self.by_type.setdefault(event_type, []).append([_FieldTest(p, c) for p, c in where.items()])

    def relevant(self, site_id: str, gateway_id: str, event: Event) -> bool:
        """The same answer as ``rules.relevant(event_fields(site_id, gateway_id, event))``."""
        clauses = self.by_type.get(event.type)
        if clauses is None:
            return False
        data = event.data
        fields: dict[str, Any] | None = None
        for tests in clauses:
            for test in tests:
                key = test.data_key
                if key is not None:
                    value = data.get(key)  # absent or stored null: lookup() answers None for both
                else:  # nested, location or envelope paths: rare, so the general route
                    if fields is None:
                        fields = event_fields(site_id, gateway_id, event)
                    value = lookup(fields, test.path)
                if not (test.if_missing if value is None else test.cond.test(value)):
                    break
            else:
                return True
        return False


class RulesError(Exception):
    """A rule file that cannot be used; ``str()`` names the file and each problem."""


class _Yaml12Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true/false, so ``on:`` and ``off`` stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader) or {}
    except OSError as exc:
        raise RulesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None


def describe(exc: ValidationError, path: Path) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s)"]
    for err in exc.errors(include_url=False):
        where = ".".join(map(str, err["loc"])) or "(file)"
        lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_rules(data: Any, path: Path | str = "<rules>") -> RuleSet:
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError(describe(exc, Path(path))) from None


def load_rules(path: Path) -> RuleSet:
    return parse_rules(_load_yaml(path), path)
