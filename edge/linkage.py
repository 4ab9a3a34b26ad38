"""Fire linkage (消防联动): on a fire alarm the gateway itself releases doors and raises gates.

Nothing here waits for the cloud. The panel driver's ``fire.alarm`` event reaches :meth:`FireLinkage.on_event`
(a gateway hook); every door and gate a matching rule names is then held released/open by its own
enforcer task, which calls the driver directly with a timeout, retries failures, re-asserts the held
state every ``reassert_interval_s`` and at once when the device comes back (``device.online``) or its
state drifts (a relocked relay, a closed gate). While a linkage is active the guard refuses cloud
commands that would undo it.

Release needs two things: the panel reset (its snapshot shows no zone in alarm, read by a poll since
this gateway started) and an operator's confirmation, a ``release_linkage`` command addressed to the
panel. Doors then go back to normal (``release``) and gates to normal (``release``), and
``fire.linkage_released`` records who confirmed.

The active linkage is kept in SQLite next to the event buffer, so a gateway restarted during an
alarm (or after a reset nobody confirmed yet) holds the doors again before the panel is even polled.

Events recorded: ``fire.linkage_activated`` (panel, zone, doors, gates), ``fire.linkage_fault`` (a
linked device could not be held, once per failure streak), ``fire.linkage_released``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import ActionFailed, DriverError, Reading
from edge.credentials import local_db_path
from steward.config import FireLinkageRule, check_linkage_rules

if TYPE_CHECKING:
    from drivers.base import Driver
    from edge.gateway import Gateway
    from protocol import Command, Event

__all__ = [
    "RELEASE_ACTION",
    "FireLinkage",
    "FireLinkageConfig",
    "FireLinkageRule",
    "check_linkage_rules",
]

log = structlog.get_logger("steward.linkage")

RELEASE_ACTION = "release_linkage"
_HOLD = {"door_access": "hold_unlocked", "barrier_gate": "hold_open"}
_RESTORE = {"door_access": "release", "barrier_gate": "release"}
# Cloud actions that would re-lock a door or lower a gate while people are evacuating. A door's
# ``unlock`` is a pulse that ends by re-locking, so it is refused too.
_REFUSED = {"door_access": {"lock", "release", "unlock"}, "barrier_gate": {"close", "release", "stop"}}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fire_linkage_active (
    panel TEXT NOT NULL,
    zone INTEGER NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (panel, zone)
) WITHOUT ROWID;
"""


class FireLinkageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[FireLinkageRule] = Field(default_factory=list)


@dataclass(slots=True)
class _Target:
    """One linked door or gate and its enforcer's bookkeeping."""

    device_id: str
    kind: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Held only by whoever is acting on the device, so a re-assert never races a release.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    asserted: bool = False
    last_ok: float = float("-inf")
    failures: int = 0
    needs_restore: bool = False


class FireLinkage:
    """Attach with :meth:`attach` (hook + guard); run :meth:`run` in the gateway's TaskGroup."""

    def __init__(
        self,
        gateway: Gateway,
        rules: list[FireLinkageRule],
        *,
        db_path: str | Path | None = None,
        check_interval_s: float = 0.5,
        reassert_interval_s: float = 5.0,
        retry_s: float = 1.0,
        action_timeout_s: float = 20.0,
    ) -> None:
        self.gateway = gateway
        self.rules = list(rules)
        self.db_path = Path(db_path) if db_path is not None else local_db_path(gateway.site)
        self.check_interval_s = check_interval_s
        self.reassert_interval_s = reassert_interval_s
        self.retry_s = retry_s
        self.action_timeout_s = action_timeout_s
        self.log = log.bind(site=gateway.site.site_id, gateway=gateway.site.gateway_id)
        self.active: dict[tuple[str, int], datetime] = {}
        self.targets: dict[str, _Target] = {}
        for rule in self.rules:
            for dev in rule.doors:
                self.targets.setdefault(dev, _Target(dev, "door_access"))
            for dev in rule.gates:
                self.targets.setdefault(dev, _Target(dev, "barrier_gate"))
        self.panels = {r.panel for r in self.rules}
        self._db_lock = asyncio.Lock()

    def attach(self) -> FireLinkage:
        self.gateway.hooks.append(self.on_event)
        self.gateway.guards.append(self.guard)
        self.gateway.local_actions[RELEASE_ACTION] = self.handle_command
        return self

    # ---- state -------------------------------------------------------------------------------
    def _rules_for(self, device_id: str) -> list[FireLinkageRule]:
        return [r for r in self.rules if device_id in r.doors or device_id in r.gates]

    def active_zones(self, device_id: str) -> list[tuple[str, int]]:
        """The active (panel, zone) pairs holding ``device_id``."""
        rules = self._rules_for(device_id)
        return sorted(k for k in self.active if any(r.covers(*k) for r in rules))

    def holding(self, device_id: str) -> str | None:
        """Why the linkage holds this device, or None; AccessControl uses it to skip unlock pulses."""
        zones = self.active_zones(device_id)
        if not zones:
            return None
        return "fire linkage: " + ", ".join(f"{p} zone {z}" for p, z in zones)

    def _alarm_zones(self, panel: str) -> list[int] | None:
        """Zones the panel reports in alarm now, or None if its state is not known since start."""
        sup = self.gateway.supervisors.get(panel)
        driver = self.gateway.drivers.get(panel)
        if sup is None or driver is None or sup.health.online is not True:
            return None
        zones = driver.snapshot().get("zones", {})
        return sorted(int(z) for z, flags in zones.items() if "alarm" in flags)

    # ---- guard -------------------------------------------------------------------------------
    def guard(self, cmd: Command) -> str | None:
        if cmd.action == RELEASE_ACTION:
            return self._release_refusal(cmd.device_id)
        target = self.targets.get(cmd.device_id)
        if target is None or cmd.action not in _REFUSED.get(target.kind, ()):
            return None
        zones = self.active_zones(cmd.device_id)
        if not zones:
            return None
        what = "doors stay released" if target.kind == "door_access" else "gates stay open"
        by_panel: dict[str, list[int]] = {}
        for p, z in zones:
            by_panel.setdefault(p, []).append(z)
        in_alarm: list[str] = []
        for p, zs in by_panel.items():
            alarm = self._alarm_zones(p)  # None: not polled yet, so as far as we know still in alarm
            in_alarm.extend(f"zone {z}" for z in zs if alarm is None or z in alarm)
        if in_alarm:
            return (
                f"fire linkage active: {', '.join(in_alarm)} in alarm; "
                f"{what} until the panel is reset and an operator confirms"
            )
        panels = ", ".join(sorted(by_panel))
        return (
            f"fire linkage active: panel reset, awaiting operator confirmation ({RELEASE_ACTION} on "
            f"{panels}); {what} until then"
        )

    def _release_refusal(self, panel: str) -> str | None:
        if panel not in self.panels:
            return f"{panel!r} is not a fire panel with linkage rules on this gateway"
        if not any(p == panel for p, _ in self.active):
            return f"no fire linkage is active for {panel}"
        alarm = self._alarm_zones(panel)
        if alarm is None:
            return f"panel {panel} state is unknown (offline or not polled yet); cannot confirm it is reset"
        if alarm:
            zones = ", ".join(str(z) for z in alarm)
            return f"panel {panel} still reports zone {zones} in alarm; reset the panel before release"
        return None

    # ---- hook --------------------------------------------------------------------------------
    async def on_event(self, event: Event) -> None:
        """Gateway hook; quick: it only changes state and wakes enforcers, which act in run()."""
        dev = event.device_id
        if event.type == "fire.alarm" and dev in self.panels:
            zone = event.data.get("zone")
            if not isinstance(zone, int):
                return
            await self._activate(dev, zone, event)
        elif event.type == "fire.restored" and (dev, event.data.get("zone")) in self.active:
            self.log.info("linkage.zone_restored_awaiting_confirmation", panel=dev, zone=event.data["zone"])
        elif dev in self.targets and self.active_zones(dev) and not event.type.startswith("fire."):
            # device.online, gate.closed, door events...: whatever it was, look at the device now.
            self.targets[dev].wake.set()

    async def _activate(self, panel: str, zone: int, event: Event) -> None:
        rules = [r for r in self.rules if r.covers(panel, zone)]
        if not rules:
            return
        for rule in rules:
            for dev in (*rule.doors, *rule.gates):
                self.targets[dev].wake.set()
        if (panel, zone) in self.active:
            return  # already active (e.g. restored from disk, then the panel reported it again)
        self.active[(panel, zone)] = event.ts
        doors = sorted({d for r in rules for d in r.doors})
        gates = sorted({g for r in rules for g in r.gates})
        self.log.warning("linkage.activated", panel=panel, zone=zone, doors=doors, gates=gates)
        await self._persist()
        data = {"zone": zone, "doors": doors, "gates": gates, "alarm_event": event.id}
        if "zone_name" in event.data:
            data["zone_name"] = event.data["zone_name"]
        await self._record(panel, "fire.linkage_activated", data)

    async def _record(self, device_id: str, type_: str, data: dict[str, Any]) -> None:
        driver = self.gateway.drivers.get(device_id)
        if driver is not None:
            await self.gateway.record(driver, Reading(type_, data))

    # ---- persistence ---------------------------------------------------------------------------
    async def load(self) -> None:
        """Read the active linkage left by a previous run; enforcers then hold its devices at once."""
        rows = await asyncio.to_thread(self._load_sync)
        for panel, zone, since in rows:
            if any(r.covers(panel, zone) for r in self.rules):
                self.active.setdefault((panel, zone), datetime.fromisoformat(since))
        if self.active:
            self.log.warning("linkage.resumed", zones=[f"{p}:{z}" for p, z in sorted(self.active)])
            for dev in self.targets:
                if self.active_zones(dev):
                    self.targets[dev].wake.set()

    def _load_sync(self) -> list[tuple[str, int, str]]:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=5)
        try:
            conn.executescript(_SCHEMA)
            return [(str(p), int(z), str(s)) for p, z, s in conn.execute("SELECT * FROM fire_linkage_active")]
        finally:
            conn.close()

    async def _persist(self) -> None:
        rows = [(p, z, since.isoformat()) for (p, z), since in self.active.items()]
        async with self._db_lock:
            try:
                async with asyncio.timeout(10):
                    await asyncio.to_thread(self._persist_sync, rows)
            except (sqlite3.Error, OSError, TimeoutError) as exc:
                # The linkage still runs from memory; only a restart would forget it.
                self.log.error("linkage.persist_failed", error=str(exc))

    def _persist_sync(self, rows: list[tuple[str, int, str]]) -> None:
        conn = sqlite3.connect(self.db_path, timeout=5, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM fire_linkage_active")
            conn.executemany("INSERT INTO fire_linkage_active VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ---- enforcement ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Hold linked devices while a linkage is active; run until cancelled."""
        await self.load()
        await self.gateway.started.wait()
        async with asyncio.TaskGroup() as tg:
            for target in self.targets.values():
                tg.create_task(self._enforce(target), name=f"linkage:{target.device_id}")

    async def _enforce(self, t: _Target) -> None:
        while True:
            wait = self.retry_s if (t.failures or t.needs_restore) else self.check_interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await t.wake.wait()
            t.wake.clear()
            async with t.lock:
                if self.active_zones(t.device_id):
                    due = time.monotonic() - t.last_ok >= self.reassert_interval_s
                    if not t.asserted or t.failures or due or self._drifted(t):
                        await self._act(t, _HOLD[t.kind])
                elif t.needs_restore and await self._act(t, _RESTORE[t.kind]):
                    t.needs_restore = False

    def _drifted(self, t: _Target) -> bool:
        driver = self.gateway.drivers.get(t.device_id)
        if driver is None:
            return False
        snap = driver.snapshot()
        if t.kind == "door_access":
            return snap.get("lock") == "locked" or snap.get("mode") != "held"
        return snap.get("hold_open") is False or snap.get("state") == "closed"

    async def _act(self, t: _Target, action: str) -> bool:
        driver: Driver | None = self.gateway.drivers.get(t.device_id)
        if driver is None:
            return False
        try:
            async with asyncio.timeout(self.action_timeout_s):
                await driver.execute(action, {})
        except (DriverError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or f"no answer within {self.action_timeout_s:g}s"
            t.failures += 1
            if t.failures == 1:
                self.log.error("linkage.action_failed", device=t.device_id, action=action, reason=reason)
                await self._record(
                    t.device_id, "fire.linkage_fault", {"action": action, "reason": reason, "retrying": True}
                )
            else:
                self.log.debug(
                    "linkage.action_failed", device=t.device_id, action=action, failures=t.failures
                )
            t.asserted = False
            return False
        if t.failures:
            self.log.info("linkage.action_recovered", device=t.device_id, action=action, failures=t.failures)
        t.failures = 0
        t.asserted = action == _HOLD[t.kind]
        t.last_ok = time.monotonic()
        self.log.info("linkage.asserted", device=t.device_id, action=action)
        return True

    # ---- release -------------------------------------------------------------------------------
    async def confirm_release(self, panel: str, confirmed_by: str) -> dict[str, Any]:
        """An operator confirmed the panel reset: restore normal operation. ActionFailed if not allowed."""
        reason = self._release_refusal(panel)
        if reason is not None:
            raise ActionFailed(panel, reason)
        cleared = sorted(k for k in self.active if k[0] == panel)
        before = {d for d in self.targets if self.active_zones(d)}
        for key in cleared:
            del self.active[key]
        await self._persist()
        to_restore = sorted(d for d in before if not self.active_zones(d))
        results: dict[str, bool] = {}

        async def restore(t: _Target) -> None:
            async with t.lock:
                t.asserted = False
                ok = await self._act(t, _RESTORE[t.kind])
                t.needs_restore = not ok
                results[t.device_id] = ok
                if not ok:
                    t.wake.set()

        async with asyncio.TaskGroup() as tg:
            for dev in to_restore:
                tg.create_task(restore(self.targets[dev]))
        restored = sorted(d for d, ok in results.items() if ok)
        failed = sorted(d for d, ok in results.items() if not ok)
        self.log.warning(
            "linkage.released", panel=panel, confirmed_by=confirmed_by, restored=restored, failed=failed
        )
        data = {
            "zones": [z for _, z in cleared],
            "confirmed_by": confirmed_by,
            "restored": restored,
            "restore_failed": failed,
        }
        await self._record(panel, "fire.linkage_released", data)
        return {"linkage": "released", **data}

    async def handle_command(self, cmd: Command) -> dict[str, Any]:
        """``release_linkage`` as a gateway-level action (CommandHandler ``local_actions``)."""
        return await self.confirm_release(cmd.device_id, cmd.issued_by)
