"""The FastAPI application. The lifespan owns everything with a lifetime: the engine (created, migrated,
disposed), the MQTT connection, and a TaskGroup running ingest and the sweeper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from cloud.api import commands as commands_api
from cloud.api import events as events_api
from cloud.api import metrics as metrics_api
from cloud.api import registry as registry_api
from cloud.api import stream as stream_api
from cloud.api.deps import Services
from cloud.commands import CommandService
from cloud.db import make_engine, make_sessions, upgrade
from cloud.errors import document_errors, install_error_handlers
from cloud.fanout import Fanout
from cloud.features import load_features
from cloud.hub import Hub
from cloud.ingest import Ingest
from cloud.metrics import Metrics
from cloud.retention import Retention
from cloud.settings import CloudSettings
from steward.mqtt import MqttClient

API_PREFIX = "/api/v1"
log = structlog.get_logger("steward.cloud")


def create_app(settings: CloudSettings) -> FastAPI:
    features = load_features()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        try:
            if settings.run_migrations:
                await upgrade(engine, settings)
            sessions = make_sessions(engine)
            mqtt = MqttClient(
                settings.broker_host,
                settings.broker_port,
                client_id=settings.client_id,
                username=settings.broker_username,
                password=settings.broker_password.get_secret_value() if settings.broker_password else None,
            )
            hub, metrics = Hub(), Metrics()
            commands = CommandService(settings, sessions, mqtt, hub, metrics)
            ingest = Ingest(settings, sessions, mqtt, hub, metrics)
            services = Services(settings, sessions, hub, metrics, commands, ingest)
            app.state.services = services
            for feature in features:
                if hasattr(feature, "setup"):
                    feature.setup(services)
            try:
                async with asyncio.TaskGroup() as tg:
                    loops = [
                        tg.create_task(ingest.run(), name="cloud-ingest"),
                        tg.create_task(commands.run_sweeper(), name="cloud-sweeper"),
                        tg.create_task(Retention(settings, sessions, metrics).run(), name="cloud-retention"),
                    ]
                    if settings.fanout_enabled:
                        fanout = Fanout(settings, hub, metrics)
                        loops.append(tg.create_task(fanout.run(), name="cloud-fanout"))
                    loops += [
                        tg.create_task(f.run(services), name=f.__name__)
                        for f in features
                        if hasattr(f, "run")
                    ]
                    log.info(
                        "cloud.started",
                        client=settings.client_id,
                        http=f"{settings.http_host}:{settings.http_port}",
                    )
                    try:
                        yield
                    finally:
                        for task in loops:
                            task.cancel()
            finally:
                await mqtt.disconnect()
        finally:
            await engine.dispose()
            log.info("cloud.stopped", client=settings.client_id)

    app = FastAPI(
        title="Steward cloud",
        version="1",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (commands_api.router, events_api.router, registry_api.router, stream_api.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(metrics_api.router)
    for feature in features:
        if hasattr(feature, "install"):
            feature.install(app)
    document_errors(app)
    return app
