"""A vehicle barrier gate behind a Modbus I/O module, with a realistic motor state machine.

Register map (same as drivers/barrier_gate.py, which documents it for installers)::

    coils     0 open pulse   1 close pulse   2 stop pulse   3 hold-open latch
    discrete  0 open limit   1 closed limit  2 vehicle loop occupied  3 motor fault  4 obstructed (jam)

The gate acts on a rising edge of a pulse coil, like a controller's push-button input. States:
``closed -> opening -> open -> closing -> closed``, plus ``stopped`` (halted mid-travel),
``fault`` (motor fault) and ``jammed`` (stalled on an obstruction). Closing is refused while the
loop is occupied or the hold-open latch is set; a vehicle arriving while the gate closes makes it
reverse, as safety rules require.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import structlog

from simulators.base import Simulator
from simulators.modbus_server import ModbusSimServer, SimUnit, TableName

__all__ = ["BarrierGateSimulator", "GateState"]

GateState = Literal["closed", "opening", "open", "closing", "stopped", "fault", "jammed"]

COIL_OPEN, COIL_CLOSE, COIL_STOP, COIL_HOLD = 0, 1, 2, 3
DI_OPEN_LIMIT, DI_CLOSED_LIMIT, DI_LOOP, DI_FAULT, DI_OBSTRUCTED = 0, 1, 2, 3, 4

log = structlog.get_logger("steward.sim.barrier_gate")


class BarrierGateSimulator(Simulator):
    kind = "barrier_gate"

    def __init__(
        self,
        unit: int = 1,
        *,
        travel_time_s: float = 3.0,
        server: ModbusSimServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if travel_time_s < 0:
            raise ValueError("travel_time_s must be >= 0")
        self.travel_time_s = travel_time_s
        self._owns_server = server is None
        self.server = server if server is not None else ModbusSimServer(host, port)
        self.unit = self.server.add_unit(SimUnit(unit, size=64, on_write=self._on_write))
        self._state: GateState = "closed"
        self._motion: asyncio.Task[None] | None = None
        self._loop_occupied = False
        self.commands: list[str] = []  # what the gate was told to do, for tests
        self.log = log.bind(unit=unit)
        self._publish()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._owns_server:
            await self.server.start()

    async def stop(self) -> None:
        await self._cancel_motion()
        if self._owns_server:
            await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "loop_occupied": self._loop_occupied,
            "hold_open": self.unit.get_bit("coils", COIL_HOLD),
            "fault": self._state == "fault",
            "obstructed": self._state == "jammed",
        }

    @property
    def gate_state(self) -> GateState:
        return self._state

    # ------------------------------------------------------------------ scripting

    def vehicle_arrives(self) -> None:
        self._loop_occupied = True
        if self._state == "closing":
            self.log.info("vehicle on loop while closing, reversing")
            self._begin("opening")
        self._publish()

    def vehicle_leaves(self) -> None:
        self._loop_occupied = False
        self._publish()

    def press_open(self) -> None:
        """The guard presses OPEN on the controller itself (the booth's push-button, not the gateway)."""
        self._command_open()  # not in self.commands: those are what came over Modbus

    def press_close(self) -> None:
        """The guard presses CLOSE on the controller itself; refused as a coil command would be."""
        self._command_close()

    def fault(self) -> None:
        """Motor fault: the gate stops where it is and ignores commands until clear_fault()."""
        self._cancel_motion_nowait()
        self._set("fault")

    def jam(self) -> None:
        """The arm stalls on an obstruction mid-travel (or the safety edge trips)."""
        self._cancel_motion_nowait()
        self._set("jammed")

    def clear_fault(self) -> None:
        if self._state in ("fault", "jammed"):
            self._set("stopped")

    # ------------------------------------------------------------------ behaviour

    def _on_write(self, table: TableName, address: int, values: list[int] | list[bool]) -> None:
        if table != "coils":
            return
        for i, value in enumerate(values):
            coil = address + i
            if coil == COIL_HOLD:
                if value:
                    self.commands.append("hold_open")
                    self._command_open()
                else:
                    self.commands.append("release")
            elif value and coil == COIL_OPEN:
                self.commands.append("open")
                self._command_open()
            elif value and coil == COIL_CLOSE:
                self.commands.append("close")
                self._command_close()
            elif value and coil == COIL_STOP:
                self.commands.append("stop")
                if self._state in ("opening", "closing"):
                    self._cancel_motion_nowait()
                    self._set("stopped")

    def _command_open(self) -> None:
        if self._state in ("fault", "jammed", "open", "opening"):
            return
        self._begin("opening")

    def _command_close(self) -> None:
        if self._state in ("fault", "jammed", "closed", "closing"):
            return
        if self._loop_occupied or self.unit.get_bit("coils", COIL_HOLD):
            # A real controller ignores close while its loop detector or latch holds it open.
            self.log.info("close refused", loop=self._loop_occupied)
            return
        self._begin("closing")

    def _begin(self, moving: Literal["opening", "closing"]) -> None:
        self._cancel_motion_nowait()
        self._set(moving)
        target: GateState = "open" if moving == "opening" else "closed"
        if self.travel_time_s == 0:
            self._set(target)
            return
        self._motion = asyncio.get_running_loop().create_task(self._travel(target), name=f"gate-{moving}")

    async def _travel(self, target: GateState) -> None:
        await asyncio.sleep(self.travel_time_s)
        self._motion = None
        self._set(target)

    def _cancel_motion_nowait(self) -> None:
        if self._motion is not None:
            self._motion.cancel()
            self._motion = None

    async def _cancel_motion(self) -> None:
        task, self._motion = self._motion, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _set(self, state: GateState) -> None:
        if state != self._state:
            self.log.debug("gate state", old=self._state, new=state)
        self._state = state
        self._publish()

    def _publish(self) -> None:
        self.unit.set(
            "discrete",
            0,
            [
                self._state == "open",
                self._state == "closed",
                self._loop_occupied,
                self._state == "fault",
                self._state == "jammed",
            ],
        )
