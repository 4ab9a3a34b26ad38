"""Cloud feature hooks for access (see :mod:`cloud.features`)."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.access.api import router
from cloud.access.service import AccessService
from cloud.api.deps import Services
from protocol.topics import PROTOCOL_SEGMENT

__all__ = ["install", "run", "setup"]

API_PREFIX = "/api/v1"


def install(app: FastAPI) -> None:
    app.include_router(router, prefix=API_PREFIX)


def setup(services: Services) -> None:
    access = AccessService(services.settings, services.sessions, services.ingest.mqtt)
    services.extras["access"] = access
    services.ingest.handlers["sync"] = access.handle_sync_state


async def run(services: Services) -> None:
    access: AccessService = services.extras["access"]
    settings = services.settings
    if settings.shared_subscription:
        # Ingest's shared filters cover events and results only; SyncState must reach one instance too.
        await services.ingest.ready.wait()
        topic = f"$share/{settings.share_group}/{settings.topic_prefix}/{PROTOCOL_SEGMENT}/+/+/up/sync"
        await services.ingest.mqtt.subscribe(topic, qos=1)
    await access.run()
