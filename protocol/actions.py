"""What each device kind can be asked to do, with the arguments each action takes.

The cloud validates operator commands against this table (422 naming what is allowed) and the
gateway's drivers implement exactly these actions, so the two cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PulseArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration_s: float = Field(default=5.0, gt=0, le=300, description="How long the lock stays released")


ACTIONS: dict[str, dict[str, type[BaseModel]]] = {
    "barrier_gate": {"open": NoArgs, "close": NoArgs, "stop": NoArgs, "hold_open": NoArgs, "release": NoArgs},
    "door_access": {"unlock": PulseArgs, "lock": NoArgs, "hold_unlocked": NoArgs, "release": NoArgs},
    "video_intercom": {"unlock": PulseArgs, "hangup": NoArgs},
    "smart_meter": {},
    # Confirms the end of fire linkage; the gateway accepts it only once the panel is reset.
    "fire_panel": {"release_linkage": NoArgs},
    "ble_sensor": {},
}


# Actions the gateway answers itself rather than the device: nothing for an installer to try on site.
GATEWAY_ACTIONS = frozenset({"release_linkage"})


class ActionNotAllowed(ValueError):
    """An action the device kind does not have, or arguments it does not take."""


def validate_action(kind: str, action: str, args: dict[str, object]) -> dict[str, object]:
    """Return the arguments with defaults filled in, or raise ActionNotAllowed saying what is allowed."""
    table = ACTIONS.get(kind)
    if table is None:
        raise ActionNotAllowed(f"unknown device kind {kind!r}")
    if action not in table:
        allowed = ", ".join(sorted(table)) or "none (this device only reports)"
        raise ActionNotAllowed(f"{kind} has no action {action!r}; allowed: {allowed}")
    try:
        return table[action].model_validate(args).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        fields = ", ".join(table[action].model_fields) or "no arguments"
        raise ActionNotAllowed(f"bad arguments for {kind}.{action} ({problems}); it takes {fields}") from None
