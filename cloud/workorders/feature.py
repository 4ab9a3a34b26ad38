"""Plugs work orders into the cloud (see cloud/features.py): routes, the ingest listener, the timer loop."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.api.deps import Services
from cloud.workorders.api import router
from cloud.workorders.service import WorkOrderService
from cloud.workorders.settings import WorkOrderSettings

API_PREFIX = "/api/v1"
NAME = "workorders"


def install(app: FastAPI) -> None:
    app.include_router(router, prefix=API_PREFIX)


def setup(services: Services) -> None:
    settings = WorkOrderSettings.from_cloud(services.settings)
    service = WorkOrderService(
        services.sessions, settings, instance=services.settings.client_id, hub=services.hub
    )
    services.extras[NAME] = service
    services.ingest.listeners.append(service.on_events)


async def run(services: Services) -> None:
    service: WorkOrderService = services.extras[NAME]
    await service.run()
