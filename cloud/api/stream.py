"""Server-sent events: stored events and command/gateway changes as they happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from cloud.api.deps import ServicesDep

router = APIRouter(tags=["stream"])
HEARTBEAT_S = 15.0


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    services: ServicesDep,
    kinds: Annotated[
        str, Query(description="Comma-separated: event, command, gateway")
    ] = "event,command,gateway",
    device_id: str | None = None,
) -> StreamingResponse:
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    hub = services.hub

    async def body() -> AsyncIterator[str]:
        async with hub.subscribe() as sub:
            yield ": connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if message["kind"] not in wanted:
                    continue
                if device_id and message["data"].get("device_id") not in (None, device_id):
                    continue
                yield f"event: {message['kind']}\ndata: {json.dumps(message['data'])}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
