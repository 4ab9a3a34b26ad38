"""Access decisions at the edge: a card, PIN, visitor code or plate is granted or denied by the gateway.

The cloud is told afterwards (``access.granted`` / ``access.denied`` go up with every other event);
it is never asked. A decision is a dictionary lookup plus, for counted visitor passes, one SQLite
write, so it takes well under 50 ms whether the uplink is up or not.

Flow::

    driver -> access.presented {card | pin | code} / gate.plate_read {plate}
           -> AccessControl hook: decide -> record access.granted|denied
                                          -> (granted) actuation queue -> worker: unlock (door) / open (gate)

Actuation runs in :meth:`AccessControl.run`'s TaskGroup, not inside the hook, because the gateway awaits
hooks while recording and a barrier gate takes seconds to travel. Sync: :meth:`handle_sync` applies
``down/credentials`` messages; ``run`` announces :class:`~protocol.credentials.SyncState` on
``up/sync`` at every (re)connect and after every sync, so the cloud knows which delta to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from drivers.base import DriverError, Reading
from edge.credentials import ApplyOutcome, CredentialStore, SyncResult
from protocol.credentials import Credential, CredentialSync, SyncState, hash_secret, normalise_plate
from protocol.models import utcnow
from steward.config import AccessSettings
from steward.mqtt import MqttError

if TYPE_CHECKING:
    from drivers.base import Driver
    from edge.gateway import Gateway
    from protocol import Event

__all__ = ["AccessControl", "AccessSettings", "AccessStats", "Decision"]

log = structlog.get_logger("steward.access")

MAX_SYNC_BYTES = 32 * 1024 * 1024
ACTUATION_QUEUE = 256
# What opens each kind of device when access is granted.
_OPEN_ACTION = {"door_access": "unlock", "barrier_gate": "open", "video_intercom": "unlock"}


@dataclass(frozen=True, slots=True)
class Decision:
    granted: bool
    reason: str | None
    credential: Credential | None = None
    uses: int | None = None


@dataclass(slots=True)
class AccessStats:
    granted: int = 0
    denied: int = 0
    actuation_failed: int = 0
    syncs_applied: int = 0
    syncs_refused: int = 0
    malformed_syncs: int = 0
    decision_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


@dataclass(frozen=True, slots=True)
class _Presented:
    kind: str  # card | pin | plate | visitor_qr
    values: tuple[str, ...]  # candidate stored values (a card has several printed forms)
    shown: str | None  # what may be logged: card number or plate, never a PIN


class AccessControl:
    """Attach to a gateway with :meth:`attach`; run :meth:`run` in the gateway's TaskGroup."""

    def __init__(
        self,
        gateway: Gateway,
        store: CredentialStore,
        settings: AccessSettings | None = None,
        *,
        held: Callable[[str], str | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.settings = settings or AccessSettings()
        salt = self.settings.pin_salt
        self.salt = salt.get_secret_value() if salt else gateway.site.site_id
        # Fire linkage's "is this device held?"; an unlock pulse would end by re-locking a held door.
        self.held = held
        self.clock = clock
        self.stats = AccessStats()
        self.log = log.bind(site=gateway.site.site_id, gateway=gateway.site.gateway_id)
        self._actuations: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=ACTUATION_QUEUE)
        self._announce = asyncio.Event()
        self._last_refusal: str | None = None

    def attach(self) -> AccessControl:
        self.gateway.hooks.append(self.on_event)
        return self

    # ---- decisions ---------------------------------------------------------------------------
    def _presented(self, event: Event) -> _Presented | None:
        d = event.data
        if event.type == "gate.plate_read":
            plate = d.get("plate")
            if not isinstance(plate, str) or not plate.strip():
                return None
            p = normalise_plate(plate)
            return _Presented("plate", (p,), p)
        if event.type != "access.presented":
            return None
        if d.get("card") is not None:
            # Readers report the card within its facility, the printed FFF-CCCCC form, or all data
            # bits as one number; a credential may have been enrolled under any of them.
            forms = [str(d[k]) for k in ("card_number", "card", "number") if d.get(k) is not None]
            return _Presented("card", tuple(dict.fromkeys(forms)), forms[0])
        if d.get("pin") is not None:
            return _Presented("pin", (hash_secret(self.salt, str(d["pin"])),), None)
        code = d.get("code", d.get("qr"))
        if code is not None:
            return _Presented("visitor_qr", (hash_secret(self.salt, str(code)),), None)
        return None

    def decide(self, device_id: str, presented: _Presented, now: datetime) -> Decision:
        """Grant or deny without counting uses (pure: memory only). The most helpful reason wins."""
        candidates = [c for v in presented.values for c in self.store.lookup(presented.kind, v)]
        if not candidates:
            return Decision(False, f"unknown {presented.kind.replace('visitor_', '')}")
        # Several credentials can share a value (PINs); any one valid here opens. Otherwise report the
        # reason of the one that came closest, in this order of specificity.
        order = ["revoked", "not valid for this door", "not yet valid", "expired", "uses exhausted"]
        best: Decision | None = None
        for c in candidates:
            reason = self._problem(c, device_id, now)
            if reason is None:
                return Decision(True, None, c)
            if best is None or order.index(reason) > order.index(best.reason or "revoked"):
                best = Decision(False, reason, c)
        assert best is not None
        return best

    def _problem(self, c: Credential, device_id: str, now: datetime) -> str | None:
        if c.revoked:
            return "revoked"
        if device_id not in c.doors:
            return "not valid for this door"
        if c.valid_from is not None and now < c.valid_from:
            return "not yet valid"
        if c.valid_until is not None and now >= c.valid_until:
            return "expired"
        if c.max_uses is not None and self.store.uses(c.id) >= c.max_uses:
            return "uses exhausted"
        return None

    async def on_event(self, event: Event) -> None:
        """Gateway hook: decide on a presentation, record the decision, queue the unlock/open."""
        presented = self._presented(event)
        if presented is None:
            return
        started = time.perf_counter()
        driver = self.gateway.drivers.get(event.device_id)
        if driver is None:
            return
        decision = self.decide(event.device_id, presented, self.clock())
        c = decision.credential
        if decision.granted and c is not None and (c.max_uses is not None or c.kind.startswith("visitor")):
            try:
                uses = await self.store.take_use(c.id, c.max_uses)
            except (sqlite3.Error, OSError, TimeoutError) as exc:
                # A pass that cannot be counted cannot be limited: refuse rather than over-admit.
                self.log.error("access.use_not_counted", credential=c.id, error=str(exc))
                decision = Decision(False, "cannot count visitor pass use (storage error)", c)
            else:
                decision = (
                    Decision(True, None, c, uses)
                    if uses is not None
                    else Decision(False, "uses exhausted", c)
                )
        if decision.granted:
            self._queue_open(driver)
        ms = (time.perf_counter() - started) * 1000
        self.stats.decision_ms.append(ms)
        await self._record(driver, event, presented, decision, ms)

    def _queue_open(self, driver: Driver) -> None:
        action = _OPEN_ACTION.get(driver.kind)
        if action is None:
            self.log.warning("access.no_open_action", device=driver.device_id, kind=driver.kind)
            return
        holder = self.held(driver.device_id) if self.held else None
        if holder:
            self.log.info("access.already_released", device=driver.device_id, by=holder)
            return
        try:
            self._actuations.put_nowait((driver.device_id, action))
        except asyncio.QueueFull:
            self.stats.actuation_failed += 1
            self.log.error("access.actuation_queue_full", device=driver.device_id)

    async def _record(
        self, driver: Driver, event: Event, presented: _Presented, decision: Decision, ms: float
    ) -> None:
        c = decision.credential
        data: dict[str, Any] = {
            "credential_kind": presented.kind,
            "presented_event": event.id,
            "decision_ms": round(ms, 2),
        }
        if presented.shown is not None:
            data["presented"] = presented.shown
        for key in ("reader", "lane"):
            if key in event.data:
                data[key] = event.data[key]
        if c is not None:
            data.update(credential_id=c.id, holder=c.holder, kind=c.kind)
            if c.max_uses is not None:
                used = decision.uses if decision.uses is not None else self.store.uses(c.id)
                data.update(uses=used, max_uses=c.max_uses)
        if decision.granted:
            self.stats.granted += 1
            await self.gateway.record(driver, Reading("access.granted", data))
        else:
            self.stats.denied += 1
            data["reason"] = decision.reason
            await self.gateway.record(driver, Reading("access.denied", data))
        self.log.info(
            "access.decided",
            device=driver.device_id,
            granted=decision.granted,
            reason=decision.reason,
            credential=c.id if c else None,
            ms=round(ms, 2),
        )

    # ---- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Actuate granted decisions and announce the credential version; run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._announcer(), name="access:sync-state")
            while True:
                device_id, action = await self._actuations.get()
                tg.create_task(self._open(device_id, action), name=f"access:{action}:{device_id}")

    async def _open(self, device_id: str, action: str) -> None:
        driver = self.gateway.drivers[device_id]
        args: dict[str, Any] = {"duration_s": self.settings.unlock_s} if action == "unlock" else {}
        try:
            async with asyncio.timeout(self.settings.action_timeout_s):
                await driver.execute(action, args)
        except (DriverError, TimeoutError) as exc:
            self.stats.actuation_failed += 1
            reason = getattr(exc, "reason", None) or f"no answer within {self.settings.action_timeout_s:g}s"
            self.log.error("access.open_failed", device=device_id, action=action, reason=reason)
            await self.gateway.record(
                driver, Reading("access.open_failed", {"action": action, "reason": reason})
            )

    async def _announcer(self) -> None:
        await self.gateway.started.wait()
        client = self.gateway.client
        assert client is not None
        while True:
            await client.wait_connected(timeout=None)
            drops = client.reconnects
            self._announce.clear()
            await self.publish_state()
            # Again after every sync; a dropped link is noticed within a second and the loop then
            # waits for the reconnect, which announces the version afresh (the count, not only the
            # flag: a link restored within that second is a new session all the same).
            while client.is_connected and client.reconnects == drops:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._announce.wait()
                if self._announce.is_set():
                    self._announce.clear()
                    await self.publish_state()

    def sync_state(self) -> SyncState:
        site = self.gateway.site
        return SyncState(
            site_id=site.site_id,
            gateway_id=site.gateway_id,
            version=self.store.version,
            credentials=len(self.store),
            at=utcnow(),
            rejected=self._last_refusal,
        )

    async def publish_state(self) -> bool:
        """Publish SyncState on up/sync; False (logged) if the uplink is down."""
        client = self.gateway.client
        if client is None or not client.is_connected:
            return False
        try:
            await client.publish(self.gateway.topics.sync, self.sync_state().to_bytes(), qos=1, timeout=5)
        except MqttError as exc:
            self.log.warning("access.sync_state_not_sent", error=str(exc))
            return False
        return True

    # ---- sync --------------------------------------------------------------------------------
    async def handle_sync(self, payload: bytes) -> SyncResult | None:
        """Apply one ``down/credentials`` message. Never raises: bad input is counted and logged."""
        site = self.gateway.site
        if len(payload) > MAX_SYNC_BYTES:
            self.stats.malformed_syncs += 1
            self.log.warning("access.sync_oversized", size=len(payload))
            return None
        try:
            sync = CredentialSync.model_validate_json(payload)
        except ValidationError as exc:
            self.stats.malformed_syncs += 1
            err = exc.errors(include_url=False)[0]
            where = ".".join(map(str, err["loc"])) or "message"
            self.log.warning("access.sync_malformed", problem=f"{where}: {err['msg']}", size=len(payload))
            return None
        if (sync.site_id, sync.gateway_id) != (site.site_id, site.gateway_id):
            self.stats.malformed_syncs += 1
            self.log.warning("access.sync_misaddressed", to_site=sync.site_id, to_gateway=sync.gateway_id)
            return None
        try:
            result = await self.store.apply(sync)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            self.stats.syncs_refused += 1
            self.log.error("access.sync_store_failed", error=str(exc), to_version=sync.to_version)
            return None
        bound = self.log.bind(
            from_version=sync.from_version, to_version=sync.to_version, full=sync.full, version=result.version
        )
        if result.outcome is ApplyOutcome.APPLIED:
            self.stats.syncs_applied += 1
            self._last_refusal = None
            bound.info("access.sync_applied", upserts=len(sync.upserts), deletes=len(sync.deletes))
        else:
            self.stats.syncs_refused += 1
            self._last_refusal = result.reason
            bound.warning("access.sync_refused", outcome=result.outcome.value, reason=result.reason)
        self._announce.set()
        return result
