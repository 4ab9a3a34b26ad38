"""Carries out commands from the cloud, refusing any that are not for us, too late, replayed or unsafe.

Every command gets exactly one final result upstream (``succeeded``, ``failed``, ``rejected`` or
``expired``). A command the gateway takes on is also ``accepted``: as a message of its own when the
action is still running after ``accepted_after_s``, otherwise as the final result's ``accepted_at`` (a
gate that opens in milliseconds then costs one message and one cloud transaction, not two). Expiry is
checked before acting, so a gate never opens minutes after the operator gave up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from drivers.base import Driver, DriverError
from protocol import Command, CommandResult, CommandStatus
from protocol.actions import ActionNotAllowed, validate_action
from protocol.models import utcnow

MAX_COMMAND_BYTES = 64 * 1024
# An action still running after this gets its own "accepted" message: an operator watching a gate
# that takes seconds to travel sees it taken on at once, as a person perceives it.
ACCEPTED_AFTER_S = 0.1

PublishResult = Callable[[CommandResult], Awaitable[None]]
ReplayGuard = Callable[[str, datetime], Awaitable[bool]]
# A guard returns a reason to refuse (e.g. fire linkage holding a door open), or None.
Guard = Callable[[Command], str | None]
Verifier = Callable[[Command], str | None]
# Actions the gateway itself carries out rather than the device (e.g. confirming fire linkage release).
LocalAction = Callable[[Command], Awaitable[dict[str, Any]]]

log = structlog.get_logger("steward.commands")


@dataclass(slots=True)
class CommandStats:
    received: int = 0
    malformed: int = 0
    rejected: int = 0
    expired: int = 0
    succeeded: int = 0
    failed: int = 0


class CommandHandler:
    def __init__(
        self,
        *,
        gateway_id: str,
        drivers: dict[str, Driver],
        publish_result: PublishResult,
        remember: ReplayGuard,
        verify: Verifier | None = None,
        guards: list[Guard] | None = None,
        local_actions: dict[str, LocalAction] | None = None,
        clock: Callable[[], datetime] = utcnow,
        action_timeout_s: float = 60.0,
        accepted_after_s: float = ACCEPTED_AFTER_S,
    ) -> None:
        self.gateway_id = gateway_id
        self.drivers = drivers
        self.publish_result = publish_result
        self.remember = remember
        self.verify = verify
        self.guards = guards if guards is not None else []
        self.local_actions = local_actions if local_actions is not None else {}
        self.clock = clock
        self.action_timeout_s = action_timeout_s
        self.accepted_after_s = accepted_after_s
        self.stats = CommandStats()

    async def handle(self, payload: bytes) -> CommandResult | None:
        """Process one raw command message; return its final result (None if it could not be answered)."""
        self.stats.received += 1
        if len(payload) > MAX_COMMAND_BYTES:
            self.stats.malformed += 1
            log.warning("command.oversized", gateway=self.gateway_id, size=len(payload))
            return None
        try:
            cmd = Command.model_validate_json(payload)
        except ValidationError as exc:
            self.stats.malformed += 1
            return await self._reject_malformed(payload, exc)
        bound = log.bind(command=cmd.id, device=cmd.device_id, action=cmd.action, gateway=self.gateway_id)

        reason = self._refusal(cmd)
        if reason is None and cmd.is_expired(self.clock()):
            self.stats.expired += 1
            bound.warning("command.expired", expires_at=cmd.expires_at.isoformat())
            return await self._result(
                cmd, CommandStatus.EXPIRED, "expired before the gateway could act on it"
            )
        if reason is None and not await self.remember(cmd.id, cmd.expires_at):
            reason = "replayed command id: already seen"
        if reason is not None:
            self.stats.rejected += 1
            bound.warning("command.rejected", reason=reason)
            return await self._result(cmd, CommandStatus.REJECTED, reason)

        driver = self.drivers[cmd.device_id]
        accepted_at = self.clock()
        announced = False

        async def announce() -> None:
            # A message of its own only for an action still running: it goes out while the device acts
            # (its PUBACK never held the gate up), and before the final result (one client's QoS 1
            # messages keep their order, and it is awaited before the final one is published).
            nonlocal announced
            await asyncio.sleep(self.accepted_after_s)
            announced = True
            await self._result(cmd, CommandStatus.ACCEPTED, None, at=accepted_at)

        accepted = asyncio.create_task(announce(), name="accepted")
        bound.info("command.accepted")
        try:
            status, reason, state = await self._act(cmd, driver, bound)
        except asyncio.CancelledError:
            accepted.cancel()  # shutting down: nothing more goes upstream for this command
            raise
        finally:
            if not announced:
                accepted.cancel()  # still waiting to announce: the final result carries accepted_at
            await asyncio.wait({accepted})  # never left running past this command
        if announced:
            accepted.result()  # its error, if any, surfaces as when it was awaited before acting
        return await self._result(cmd, status, reason, state, accepted_at=None if announced else accepted_at)

    async def _act(
        self, cmd: Command, driver: Driver, bound: Any
    ) -> tuple[CommandStatus, str | None, dict[str, Any]]:
        """Carry out an accepted command: its final status, reason and device state."""
        try:
            async with asyncio.timeout(self.action_timeout_s):
                local = self.local_actions.get(cmd.action)
                args = validate_action(driver.kind, cmd.action, cmd.args)
                state = await (local(cmd) if local else driver.execute(cmd.action, args))
        except DriverError as exc:
            self.stats.failed += 1
            bound.warning("command.failed", reason=exc.reason)
            return CommandStatus.FAILED, exc.reason, driver.snapshot()
        except TimeoutError:
            self.stats.failed += 1
            reason = f"device did not finish {cmd.action} within {self.action_timeout_s:g}s"
            bound.warning("command.failed", reason=reason)
            return CommandStatus.FAILED, reason, driver.snapshot()
        self.stats.succeeded += 1
        bound.info("command.succeeded")
        return CommandStatus.SUCCEEDED, None, state

    def _refusal(self, cmd: Command) -> str | None:
        if cmd.gateway_id != self.gateway_id:
            return f"command is for gateway {cmd.gateway_id!r}, not this one"
        if self.verify is not None:
            problem = self.verify(cmd)
            if problem:
                return problem
        driver = self.drivers.get(cmd.device_id)
        if driver is None:
            return f"unknown device {cmd.device_id!r} on this gateway"
        try:
            validate_action(driver.kind, cmd.action, cmd.args)
        except ActionNotAllowed as exc:
            return str(exc)
        for guard in self.guards:
            problem = guard(cmd)
            if problem:
                return problem
        return None

    async def _reject_malformed(self, payload: bytes, exc: ValidationError) -> CommandResult | None:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "message"
        log.warning("command.malformed", gateway=self.gateway_id, problem=f"{where}: {first['msg']}")
        # Answer when we can tell which command it was, so the operator is not left waiting for expiry.
        try:
            raw: Any = json.loads(payload)
            cid, dev = str(raw["id"]), str(raw["device_id"])
        except (ValueError, KeyError, TypeError):
            return None
        if raw.get("gateway_id") != self.gateway_id or not cid or len(cid) > 64:
            return None
        try:
            result = CommandResult(
                command_id=cid,
                gateway_id=self.gateway_id,
                device_id=dev,
                status=CommandStatus.REJECTED,
                reason=f"malformed command ({where}: {first['msg']})"[:500],
                at=self.clock(),
            )
        except ValidationError:
            return None
        await self.publish_result(result)
        return result

    async def _result(
        self,
        cmd: Command,
        status: CommandStatus,
        reason: str | None,
        state: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> CommandResult:
        result = CommandResult(
            command_id=cmd.id,
            gateway_id=self.gateway_id,
            device_id=cmd.device_id,
            status=status,
            reason=reason,
            at=at or self.clock(),
            state=state or {},
            accepted_at=accepted_at,
        )
        await self.publish_result(result)
        return result
