"""Prometheus text exposition at ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from cloud import store
from cloud.api.deps import ServicesDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    online, skewed = await services.commands.gateway_counts()
    return PlainTextResponse(
        services.metrics.render(online, skewed, store.device_id_clashes()),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )
