"""The accounts feature (see :mod:`cloud.features`): routers, the auth gate, the 401/403/429 handler."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.deps import Services
from cloud.auth.api import router
from cloud.auth.deps import API_PREFIX, AuthGate, auth_service
from cloud.auth.errors import AuthError, Forbidden
from cloud.auth.registration import Registrar
from cloud.auth.service import AuthService, log
from cloud.errors import error_body
from protocol.signing import public_key_b64


def install(app: FastAPI) -> None:
    app.include_router(router, prefix=API_PREFIX)
    app.add_middleware(AuthGate)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        if isinstance(exc, Forbidden):
            try:
                await auth_service(request.app).audit(
                    "forbidden",
                    username=exc.username,
                    site_id=exc.site_id,
                    permission=exc.permission,
                    client_ip=request.client.host if request.client else None,
                    detail=f"{request.method} {request.url.path}",
                )
            except SQLAlchemyError as err:
                log.error("auth.audit_store_failed", error=str(err)[:300], refused=exc.message)
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers())


def setup(services: Services) -> None:
    auth = AuthService(services.settings, services.sessions)
    auth.command_public_key = public_key_b64(services.commands.signing_key)
    services.extras["auth"] = auth
    services.extras["auth.registrar"] = Registrar(services.settings, services.sessions)
