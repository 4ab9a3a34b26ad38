"""Video intercom door stations on MQTT: calls to the guard centre or an apartment, and the door beside them.

Device protocol (JSON, UTF-8, at most 64 KiB; ``{base}`` is the device's ``transport.topic_base``)::

    station -> {base}/event
      {"event": "call", "call_id": "c-17", "target": "centre" | "apartment", "apartment": "3-1-1202"}
      {"event": "answered", "call_id": "c-17", "by": "centre" | "apartment"}
      {"event": "ended", "call_id": "c-17", "reason": "hangup" | "caller" | "remote" | ...}

    gateway -> {base}/cmd            {"id": "<correlation id>", "action": "unlock", "args": {"duration_s": 5}}
                                     {"id": "...", "action": "hangup", "args": {"call_id": "c-17"}}
    station -> {base}/reply          {"id": "<same id>", "ok": true, "state": {"door_unlocked_until": "...",
                                      "call": "c-17" | null}}  |  {"id": "...", "ok": false, "error": "..."}

``apartment`` is required when ``target`` is ``apartment``. Events emitted: ``intercom.call_started``,
``intercom.call_answered``, ``intercom.call_ended`` and ``intercom.call_missed`` — once per call,
when nobody answered within ``missed_after_s`` (the driver times this) or the call ended unanswered
before that. Malformed or oversized payloads are logged naming the device, counted and ignored.
A reply that does not come within ``reply_timeout_s`` raises DeviceUnreachable; a refusal ActionFailed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from drivers.base import Reading
from drivers.mqtt_push import MqttPushDriver
from drivers.transports.mqtt import (
    MAX_PAYLOAD,
    describe_validation_error,
)

__all__ = [
    "IntercomDriver",
    "IntercomOptions",
    "StationEvent",
]

_MAX_CALLS = 32  # calls tracked at once; a station spamming call ids cannot grow memory


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


CallId = Annotated[str, Field(min_length=1, max_length=64)]


class CallEvent(_Wire):
    event: Literal["call"]
    call_id: CallId
    target: Literal["centre", "apartment"]
    apartment: str | None = Field(default=None, min_length=1, max_length=32)

    @model_validator(mode="after")
    def _apartment(self) -> CallEvent:
        if self.target == "apartment" and self.apartment is None:
            raise ValueError("a call to an apartment names the apartment")
        return self


class AnsweredEvent(_Wire):
    event: Literal["answered"]
    call_id: CallId
    by: str | None = Field(default=None, max_length=64)


class EndedEvent(_Wire):
    event: Literal["ended"]
    call_id: CallId
    reason: str | None = Field(default=None, max_length=64)


StationEvent = TypeAdapter(Annotated[CallEvent | AnsweredEvent | EndedEvent, Field(discriminator="event")])


class IntercomOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    missed_after_s: float = Field(
        default=30.0, gt=0, le=600, description="Unanswered this long -> call_missed"
    )
    max_call_s: float = Field(
        default=1800.0, gt=0, description="Forget a call with no 'ended' after this long"
    )
    reply_timeout_s: float = Field(default=3.0, gt=0, le=60)


@dataclass(slots=True)
class _Call:
    call_id: str
    target: str
    apartment: str | None
    started: float
    answered_at: float | None = None
    missed: bool = False

    def info(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "target": self.target, "apartment": self.apartment}


class IntercomDriver(MqttPushDriver):
    kind: ClassVar[str] = "video_intercom"
    Options: ClassVar[type[BaseModel]] = IntercomOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, _Call] = {}
        self.door_unlocked_until: str | None = None

    def next_deadline(self) -> float | None:
        deadlines = [
            c.started
            + (self.options.max_call_s if c.missed or c.answered_at else self.options.missed_after_s)
            for c in self.calls.values()
        ]
        return min(deadlines, default=None)

    def due(self, now: float) -> list[Reading]:
        """Timer events whose time has come: unanswered calls become missed; stale calls are forgotten."""
        out: list[Reading] = []
        for call in list(self.calls.values()):
            if (
                call.answered_at is None
                and not call.missed
                and now >= call.started + self.options.missed_after_s
            ):
                call.missed = True
                out.append(
                    Reading(
                        "intercom.call_missed",
                        {**call.info(), "reason": "not_answered", "after_s": self.options.missed_after_s},
                    )
                )
            elif now >= call.started + self.options.max_call_s:
                self.log.warning("intercom.call_forgotten", call_id=call.call_id, reason="no ended event")
                del self.calls[call.call_id]
        return out

    def handle(self, payload: bytes, now: float) -> list[Reading]:
        """One station event -> readings. Bad payloads are counted and logged, never raised."""
        if len(payload) > MAX_PAYLOAD:
            self.bad_payloads(f"event of {len(payload)} bytes is over {MAX_PAYLOAD}", payload[:200])
            return []
        try:
            event = StationEvent.validate_json(payload)
        except ValidationError as exc:
            self.bad_payloads(f"malformed event: {describe_validation_error(exc)}", payload)
            return []
        if isinstance(event, CallEvent):
            if event.call_id in self.calls:
                return []  # the station repeated itself
            if len(self.calls) >= _MAX_CALLS:
                oldest = min(self.calls.values(), key=lambda c: c.started)
                del self.calls[oldest.call_id]
            new = self.calls[event.call_id] = _Call(event.call_id, event.target, event.apartment, now)
            return [Reading("intercom.call_started", new.info())]
        call = self.calls.get(event.call_id)
        if isinstance(event, AnsweredEvent):
            if call is None:
                return [Reading("intercom.call_answered", {"call_id": event.call_id, "by": event.by})]
            if call.answered_at is not None:
                return []
            call.answered_at = now
            return [
                Reading(
                    "intercom.call_answered",
                    {**call.info(), "by": event.by, "ring_s": round(now - call.started, 1)},
                )
            ]
        # ended
        if call is None:
            return [Reading("intercom.call_ended", {"call_id": event.call_id, "reason": event.reason})]
        del self.calls[call.call_id]
        out: list[Reading] = []
        if call.answered_at is None and not call.missed:
            out.append(Reading("intercom.call_missed", {**call.info(), "reason": "ended_unanswered"}))
        talk_s = None if call.answered_at is None else round(now - call.answered_at, 1)
        out.append(
            Reading(
                "intercom.call_ended",
                {
                    **call.info(),
                    "reason": event.reason,
                    "answered": call.answered_at is not None,
                    "talk_s": talk_s,
                },
            )
        )
        return out

    # ---- actions ---------------------------------------------------------------------------
    async def execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "unlock":
            cmd_args: dict[str, Any] = {"duration_s": float(args.get("duration_s", 5.0))}
        elif action == "hangup":
            active = self._active_call()
            cmd_args = {"call_id": active.call_id} if active is not None else {}
        else:
            return await super().execute(action, args)
        state = await self.channel.request(action, cmd_args, self.options.reply_timeout_s)
        until = state.get("door_unlocked_until")
        if isinstance(until, str):
            self.door_unlocked_until = until
        return self.snapshot()

    def _active_call(self) -> _Call | None:
        return max(self.calls.values(), key=lambda c: c.started, default=None)

    def snapshot(self) -> dict[str, Any]:
        active = self._active_call()
        return {
            "call": None if active is None else {**active.info(), "answered": active.answered_at is not None},
            "calls": len(self.calls),
            "door_unlocked_until": self.door_unlocked_until,
            "bad_payloads": self.bad_payloads.count,
            "dropped": self.channel.dropped if self._channel is not None else 0,
        }
