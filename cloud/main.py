"""Run the cloud service: uvicorn, programmatically, until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import uvicorn

from cloud.api.deps import Services
from cloud.app import create_app
from cloud.settings import CloudSettings

log = structlog.get_logger("steward.cloud")


async def serve(settings: CloudSettings, *, ready: asyncio.Event | None = None) -> None:
    """Serve HTTP and ingest until cancelled (or uvicorn is told to exit); ``ready`` is set once the
    HTTP socket listens and ingest is subscribed to the broker. Cancelling shuts down cleanly."""
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            http="httptools",  # a dependency: never fall back to h11 silently
            log_config=None,
            lifespan="on",
        )
    )
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(server.serve(), name="cloud-http")
        try:
            while not server.started:
                if serving.done():
                    return  # start-up failed; the TaskGroup re-raises the error
                await asyncio.sleep(0.02)
            services: Services = app.state.services
            await services.ingest.ready.wait()
            if ready is not None:
                ready.set()
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(serving), 15)
            raise
