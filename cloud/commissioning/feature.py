"""Cloud feature hooks for commissioning reports (see :mod:`cloud.features`)."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.commissioning.api import router

__all__ = ["install"]

API_PREFIX = "/api/v1"


def install(app: FastAPI) -> None:
    app.include_router(router, prefix=API_PREFIX)
