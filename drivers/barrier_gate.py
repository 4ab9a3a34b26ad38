"""Vehicle barrier gate driven through a Modbus I/O module (e.g. a Moxa ioLogik / ADAM-6050 class box).

Register map, wired by the installer as follows::

    coil 0            OPEN pulse     -> gate controller "open" push-button input
    coil 1            CLOSE pulse    -> "close" input
    coil 2            STOP pulse     -> "stop" input
    coil 3            HOLD-OPEN latch (held on = gate stays open, close refused)
    discrete input 0  fully-open limit switch
    discrete input 1  fully-closed limit switch
    discrete input 2  vehicle loop detector (occupied)
    discrete input 3  motor fault relay
    discrete input 4  obstruction / jam (safety edge or photo-eye tripped)

Pulses are ``True`` for ``pulse_s`` then ``False``, the way a push button would be pressed. The
gate's position is derived from the limits: open limit -> ``open``, closed limit -> ``closed``,
neither -> ``moving``; the fault input overrides both.

Events (edges only; a steady state is reported once): ``gate.opened``, ``gate.closed``,
``gate.vehicle_detected``, ``gate.fault``, ``gate.obstructed``. The first successful read, and the
first after the supervisor reported the gate offline, reports ``gate.state`` (``state``,
``loop_occupied``) with where the gate is, so the operators' view starts from its real position
instead of "unknown"; a fault or jam present then is reported as well.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import ActionFailed, Driver, Emit, Reading
from steward.config import ModbusRtuTransport, ModbusTcpTransport

if TYPE_CHECKING:
    from drivers.hub import TransportHub
    from steward.config import DeviceConfig

__all__ = ["BarrierGateDriver", "BarrierGateOptions"]

COIL_OPEN, COIL_CLOSE, COIL_STOP, COIL_HOLD = 0, 1, 2, 3
DI_OPEN_LIMIT, DI_CLOSED_LIMIT, DI_LOOP, DI_FAULT, DI_OBSTRUCTED = 0, 1, 2, 3, 4
DI_COUNT = 5


class BarrierGateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    travel_timeout_s: float = Field(
        default=15.0, gt=0, le=120, description="How long open/close may take before the action fails"
    )
    pulse_s: float = Field(default=0.3, ge=0, le=5, description="How long a command coil is held on")
    confirm_interval_s: float = Field(
        default=0.1, gt=0, le=5, description="How often the limits are re-read while an action waits"
    )


class _Inputs:
    __slots__ = ("closed_limit", "fault", "loop", "obstructed", "open_limit")

    def __init__(self, bits: list[bool]) -> None:
        self.open_limit = bits[DI_OPEN_LIMIT]
        self.closed_limit = bits[DI_CLOSED_LIMIT]
        self.loop = bits[DI_LOOP]
        self.fault = bits[DI_FAULT]
        self.obstructed = bits[DI_OBSTRUCTED]

    @property
    def state(self) -> str:
        if self.fault:
            return "fault"
        if self.open_limit and not self.closed_limit:
            return "open"
        if self.closed_limit and not self.open_limit:
            return "closed"
        return "moving"


class BarrierGateDriver(Driver):
    kind: ClassVar[str] = "barrier_gate"
    Options: ClassVar[type[BaseModel]] = BarrierGateOptions

    def __init__(self, config: DeviceConfig, hub: TransportHub, emit: Emit) -> None:
        super().__init__(config, hub, emit)
        transport = config.transport
        if not isinstance(transport, ModbusTcpTransport | ModbusRtuTransport):
            raise TypeError(f"{config.id}: barrier_gate needs a Modbus transport, not {transport.type}")
        self.unit = transport.unit
        self.bus = hub.modbus(transport)
        self._inputs: _Inputs | None = None
        self._hold_open = False
        self._updated: float | None = None
        self._resync = False
        # poll() and execute() run concurrently: the read-compare-update of the last state is
        # atomic under this lock so each edge is reported exactly once, by whichever saw it.
        self._state_lock = asyncio.Lock()
        self._command_seq = 0

    @classmethod
    def check_config(cls, dev: DeviceConfig) -> list[str]:
        if not isinstance(dev.transport, ModbusTcpTransport | ModbusRtuTransport):
            return [f"barrier_gate needs a modbus transport, not {dev.transport.type}"]
        return []

    # ------------------------------------------------------------------ reading

    async def _refresh(self) -> list[Reading]:
        async with self._state_lock:
            bits = await self.bus.read_discrete(self.unit, 0, DI_COUNT, self.device_id)
            new = _Inputs(bits)
            old, self._inputs = self._inputs, new
            self._updated = time.time()
            resync, self._resync = self._resync, False
            return self._edges(old, new, resync=resync)

    def _edges(self, old: _Inputs | None, new: _Inputs, *, resync: bool = False) -> list[Reading]:
        out: list[Reading] = []
        data = {"state": new.state, "loop_occupied": new.loop}
        if old is None or resync:
            # Where the gate is, not news: without it the console shows "unknown" until the gate
            # first moves, or keeps a position from before an outage. gate.opened here would claim
            # a movement nobody saw (and read as one in the event log).
            out.append(Reading("gate.state", dict(data)))
        if old is None:
            # A fault present at the first look is news, as the fire panel reports a fire at start.
            if new.fault:
                out.append(Reading("gate.fault", {**data, "reason": "motor fault"}))
            if new.obstructed:
                out.append(Reading("gate.obstructed", {**data, "reason": "jam"}))
        else:
            if new.state != old.state:
                if new.state == "fault":
                    out.append(Reading("gate.fault", {**data, "reason": "motor fault"}))
                elif resync:
                    pass  # moved while we could not see it: gate.state above says where it is now
                elif new.state == "open":
                    out.append(Reading("gate.opened", dict(data)))
                elif new.state == "closed":
                    out.append(Reading("gate.closed", dict(data)))
            if new.loop and not old.loop:
                out.append(Reading("gate.vehicle_detected", dict(data)))
            if new.obstructed and not old.obstructed:
                out.append(Reading("gate.obstructed", {**data, "reason": "jam"}))
        for r in out:
            self.log.info("gate event", type=r.type, state=new.state, loop=new.loop)
        return out

    def went_offline(self) -> None:
        # Report the position afresh on the first poll that answers (see _edges).
        self._resync = True

    async def poll(self) -> list[Reading]:
        return await self._refresh()

    async def _refresh_and_emit(self) -> _Inputs:
        for reading in await self._refresh():
            await self.emit(reading)
        assert self._inputs is not None
        return self._inputs

    def snapshot(self) -> dict[str, Any]:
        if self._inputs is None:
            return {"state": "unknown", "hold_open": self._hold_open}
        i = self._inputs
        return {
            "state": i.state,
            "loop_occupied": i.loop,
            "fault": i.fault,
            "obstructed": i.obstructed,
            "hold_open": self._hold_open,
            "updated_at": self._updated,
        }

    # ------------------------------------------------------------------ actions

    async def _pulse(self, coil: int) -> None:
        await self.bus.write_coil(self.unit, coil, True, self.device_id)
        try:
            if self.options.pulse_s:
                await asyncio.sleep(self.options.pulse_s)
        finally:
            # Release the "button" even if the action was cancelled mid-pulse.
            await asyncio.shield(self.bus.write_coil(self.unit, coil, False, self.device_id))

    async def execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        self._command_seq += 1
        seq = self._command_seq
        self.log.info("gate action", action=action)
        if action == "open":
            inputs = await self._refresh_and_emit()
            self._refuse_if_faulted(inputs, "open")
            if inputs.state != "open":
                await self._pulse(COIL_OPEN)
                await self._wait_for("open", seq)
        elif action == "close":
            await self._close(seq)
        elif action == "stop":
            await self._pulse(COIL_STOP)
            await self._refresh_and_emit()
        elif action == "hold_open":
            inputs = await self._refresh_and_emit()
            self._refuse_if_faulted(inputs, "hold open")
            await self.bus.write_coil(self.unit, COIL_HOLD, True, self.device_id)
            self._hold_open = True
            if inputs.state != "open":
                await self._wait_for("open", seq)
        elif action == "release":
            await self.bus.write_coil(self.unit, COIL_HOLD, False, self.device_id)
            self._hold_open = False
            await self._refresh_and_emit()
        else:
            return await super().execute(action, args)
        return self.snapshot()

    def _refuse_if_faulted(self, inputs: _Inputs, what: str) -> None:
        if inputs.fault:
            raise ActionFailed(self.device_id, f"motor fault, cannot {what}")
        if inputs.obstructed:
            raise ActionFailed(self.device_id, f"gate obstructed (jam), cannot {what}")

    async def _close(self, seq: int) -> None:
        inputs = await self._refresh_and_emit()
        self._refuse_if_faulted(inputs, "close")
        if inputs.loop:
            await self._obstructed(inputs, "vehicle on loop")
            raise ActionFailed(self.device_id, "vehicle on loop, refusing to close")
        latched = await self.bus.read_coils(self.unit, COIL_HOLD, 1, self.device_id)
        self._hold_open = latched[0]
        if latched[0]:
            raise ActionFailed(self.device_id, "gate is held open; release it before closing")
        if inputs.state == "closed":
            return
        await self._pulse(COIL_CLOSE)
        await self._wait_for("closed", seq)

    async def _obstructed(self, inputs: _Inputs, reason: str) -> None:
        await self.emit(
            Reading(
                "gate.obstructed", {"state": inputs.state, "loop_occupied": inputs.loop, "reason": reason}
            )
        )

    async def _wait_for(self, target: str, seq: int) -> None:
        timeout = self.options.travel_timeout_s
        deadline = time.monotonic() + timeout
        limit = "open" if target == "open" else "closed"
        while True:
            inputs = await self._refresh_and_emit()
            if inputs.state == target:
                return
            if inputs.fault:
                raise ActionFailed(self.device_id, "motor fault")
            if inputs.obstructed:
                raise ActionFailed(self.device_id, f"gate jammed before reaching {limit} limit")
            if target == "closed" and inputs.loop:
                # The controller reverses on a vehicle; closing has failed, not merely slowed.
                await self._obstructed(inputs, "vehicle on loop while closing")
                raise ActionFailed(self.device_id, "vehicle on loop while closing, gate reversed")
            if seq != self._command_seq:
                raise ActionFailed(self.device_id, f"{target} interrupted by a later command")
            if time.monotonic() >= deadline:
                raise ActionFailed(self.device_id, f"gate did not reach {limit} limit within {timeout:g}s")
            await asyncio.sleep(min(self.options.confirm_interval_s, max(0.0, deadline - time.monotonic())))
