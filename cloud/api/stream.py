"""Server-sent events: stored events and command, gateway and work order changes as they happen, on
whichever cloud instance they happened (see :mod:`cloud.fanout`).

A caller sees only messages of their sites, or of the one ``site_id`` names (a console on one estate
need not carry every estate's meter readings). Browsers' ``EventSource`` cannot set headers, so this route
also takes the token as ``?access_token=``; the stream ends when that token expires or is revoked
(checked at every heartbeat).

The first message, ``ready``, says the stream is subscribed: whatever happens from then on is sent, so
a client reads its lists after ``ready`` (not on the connection's opening) and misses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from cloud.api.deps import ServicesDep
from cloud.auth.deps import CurrentUser, auth_service, require_site, token_from
from cloud.auth.permissions import Permission
from cloud.tables import Gateway

router = APIRouter(tags=["stream"])
HEARTBEAT_S = 15.0


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    *,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    kinds: Annotated[
        str, Query(description="Comma-separated: event, command, gateway, work_order")
    ] = "event,command,gateway",
    device_id: str | None = None,
    site_id: str | None = None,
    access_token: Annotated[
        str | None, Query(description="For EventSource, which cannot send Authorization")
    ] = None,
) -> StreamingResponse:
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    if site_id:
        require_site(user, site_id)
    hub = services.hub
    sites = user.sites_with(Permission.READ)
    token = token_from(request.headers, request.url.path, request.scope.get("query_string", b""))
    auth = auth_service(request.app)
    gateway_sites: dict[str, str | None] = {}

    async def site_of(data: dict[str, Any]) -> str | None:
        if data.get("site_id"):
            return str(data["site_id"])
        gateway_id = str(data.get("id") or data.get("gateway_id") or "")
        if gateway_id not in gateway_sites:
            async with services.commands.read_sessions() as session:
                row = await session.get(Gateway, gateway_id)
            gateway_sites[gateway_id] = row.site_id if row else None
        return gateway_sites[gateway_id]

    async def body() -> AsyncIterator[str]:
        # The hub routes by site: a stream of one estate (or of an operator's few) is not woken for the
        # others'; the checks below remain for messages that do not say their site.
        scope = [site_id] if site_id else (sorted(sites) if sites is not None else None)
        async with hub.subscribe(wanted, scope) as sub:
            # An EventSource's "open" means the headers came, which left before this subscription: a
            # console that reloads its lists on "ready" instead cannot miss a change in between.
            ready = {"kinds": sorted(wanted), "site_id": site_id, "device_id": device_id}
            yield f"event: ready\ndata: {json.dumps(ready)}\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    if await auth.authenticate(token) is None:
                        yield 'event: end\ndata: {"reason": "token expired or revoked"}\n\n'
                        return
                    yield ": ping\n\n"
                    continue
                if message["kind"] not in wanted:
                    continue
                if device_id and message["data"].get("device_id") not in (None, device_id):
                    continue
                if sites is not None or site_id:
                    site = await site_of(message["data"])
                    if (sites is not None and site not in sites) or (site_id and site != site_id):
                        continue
                yield f"event: {message['kind']}\ndata: {json.dumps(message['data'])}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
