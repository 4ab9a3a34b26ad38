"""Escalation webhook: JSON POST, HMAC-SHA256 signature, retried with exponential backoff from an outbox.

The body is compact JSON with sorted keys. Headers::

    X-Steward-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared secret>
    X-Steward-Delivery:  <delivery id>   (the same on every retry: receivers de-duplicate on it)
    X-Steward-Attempt:   <1, 2, ...>
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.workorders import store
from cloud.workorders.settings import WorkOrderSettings
from cloud.workorders.tables import WebhookDelivery

log = structlog.get_logger("steward.cloud.workorders.webhook")
SIGNATURE_HEADER = "X-Steward-Signature"
DELIVERY_HEADER = "X-Steward-Delivery"


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute over the raw body and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def backoff(settings: WorkOrderSettings, attempts: int) -> timedelta:
    """Delay before attempt ``attempts + 1``: backoff, 2x, 4x, ... capped."""
    return timedelta(
        seconds=min(settings.webhook_backoff_s * 2 ** (attempts - 1), settings.webhook_backoff_max_s)
    )


class WebhookSender:
    """Sends due outbox rows. Each row is leased (committed) first, then POSTed outside any transaction,
    so a slow receiver never holds a database lock; a lease that runs out lets another instance retry."""

    def __init__(
        self, settings: WorkOrderSettings, sessions: async_sessionmaker[AsyncSession], instance: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.instance = instance
        self.lease = timedelta(seconds=settings.webhook_timeout_s * 3)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url and self.settings.webhook_secret)

    async def deliver_due(self, now: datetime) -> int:
        """Attempt every delivery due at ``now``; returns how many were delivered."""
        if not self.enabled:
            return 0
        async with self.sessions() as session, session.begin():
            rows = await store.lease_deliveries(session, now, self.instance, self.lease)
        if not rows:
            return 0
        delivered = 0
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s) as client:
            for row in rows:
                error = await self._post(client, row)
                delivered += error is None
                await self._record(row.id, now, error)
        return delivered

    async def _post(self, client: httpx.AsyncClient, row: WebhookDelivery) -> str | None:
        assert self.settings.webhook_url and self.settings.webhook_secret
        body = body_bytes(row.payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.settings.webhook_secret.get_secret_value(), body),
            DELIVERY_HEADER: str(row.id),
            "X-Steward-Attempt": str(row.attempts + 1),
        }
        try:
            response = await client.post(self.settings.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"

    async def _record(self, delivery_id: int, now: datetime, error: str | None) -> None:
        async with self.sessions() as session, session.begin():
            row = await session.get(WebhookDelivery, delivery_id)
            if row is None:
                return
            row.attempts += 1
            row.lease_until, row.leased_by = None, None
            if error is None:
                row.delivered_at, row.last_error = now, None
                log.info(
                    "webhook.delivered", delivery=row.id, work_order=row.work_order_id, attempts=row.attempts
                )
                return
            row.last_error = error
            if row.attempts >= self.settings.webhook_max_attempts:
                row.gave_up_at = now
                log.error("webhook.gave_up", delivery=row.id, attempts=row.attempts, error=error)
            else:
                row.next_attempt_at = now + backoff(self.settings, row.attempts)
                log.warning(
                    "webhook.retrying",
                    delivery=row.id,
                    attempts=row.attempts,
                    at=row.next_attempt_at,
                    error=error,
                )
