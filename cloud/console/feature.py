"""Mount the static console at ``/console/`` and send ``/`` there."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
MOUNT_PATH = "/console"


def install(app: FastAPI) -> None:
    """Serve ``static/`` (``index.html`` for ``/console/``) and redirect the bare host to it."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(url=f"{MOUNT_PATH}/", status_code=307)

    app.mount(MOUNT_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="console")
