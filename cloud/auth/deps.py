"""What routers use: ``CurrentUser``, :func:`require_site`, :func:`require`, :func:`site_clause`.

Every route under ``/api/v1`` except login and the OpenAPI docs needs ``Authorization: Bearer <token>``.
Two layers enforce it: :class:`AuthGate` (ASGI middleware) refuses a request without a valid token
before any router runs, so a router that forgets ``CurrentUser`` is still closed; and ``CurrentUser``
hands the router the caller for its site checks (reusing what the gate found, one lookup per request).
Paths whose last segment is ``stream`` (server-sent events) also accept ``?access_token=``, because a
browser's ``EventSource`` cannot set headers.

Typical use::

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: str, user: CurrentUser, session: ReadSessionDep) -> ThingOut:
        row = ...                                             # 404 if missing
        require_site(user, row.site_id, Permission.READ)      # 403 (audited) if not the user's site
        ...

    query = select(Thing).where(site_clause(user, Thing.site_id))   # lists: only the user's sites
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import ColumnElement, true
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud.auth.errors import Forbidden, Unauthorized
from cloud.auth.permissions import Permission, Principal
from cloud.errors import error_body

if TYPE_CHECKING:
    from cloud.auth.service import AuthService

__all__ = [
    "API_PREFIX",
    "AuthGate",
    "CurrentUser",
    "auth_service",
    "current_user",
    "require",
    "require_site",
    "site_clause",
]

API_PREFIX = "/api/v1"
PUBLIC_PATHS = frozenset(
    {
        f"{API_PREFIX}/auth/login",
        f"{API_PREFIX}/openapi.json",
        f"{API_PREFIX}/docs",
        f"{API_PREFIX}/docs/oauth2-redirect",
    }
)
_bearer = HTTPBearer(auto_error=False, description="A login token (POST /api/v1/auth/login) or an API token")


def needs_token(path: str) -> bool:
    return (path == API_PREFIX or path.startswith(API_PREFIX + "/")) and path not in PUBLIC_PATHS


def _query_token_allowed(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1] == "stream"


def token_from(headers: Headers, path: str, query_string: bytes) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if _query_token_allowed(path):
        values = parse_qs(query_string.decode("latin-1")).get("access_token")
        if values:
            return values[0]
    return None


def auth_service(app: Any) -> AuthService:
    service: AuthService = app.state.services.extras["auth"]
    return service


class AuthGate:
    """ASGI middleware: no valid token, no ``/api/v1`` (except :data:`PUBLIC_PATHS`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_token(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = token_from(Headers(scope=scope), scope["path"], scope.get("query_string", b""))
        principal = await auth_service(scope["app"]).authenticate(token)
        if principal is None:
            message = "a valid bearer token is required" if token is None else "token invalid or expired"
            body = json.dumps(error_body("unauthorized", message)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def current_user(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The authenticated caller (401 if none). ``_credentials`` only documents the scheme in OpenAPI."""
    state = request.scope.setdefault("state", {})
    found = state.get("principal")
    if isinstance(found, Principal):
        return found
    token = token_from(request.headers, request.url.path, request.scope.get("query_string", b""))
    principal = await auth_service(request.app).authenticate(token)
    if principal is None:
        raise Unauthorized("a valid bearer token is required")
    state["principal"] = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_site(user: Principal, site_id: str, permission: Permission = Permission.READ) -> None:
    """Return if ``user`` may do ``permission`` at ``site_id``; else raise :class:`Forbidden` (403),
    which the app's handler records in ``auth_audit`` and the log. Synchronous: call it, don't await."""
    if not user.can(permission, site_id):
        raise Forbidden(
            f"{user.username} ({user.role}) may not {permission} at site {site_id!r}",
            username=user.username,
            site_id=site_id,
            permission=str(permission),
        )


def require(user: Principal, permission: Permission) -> None:
    """For permissions not tied to one site (``manage_users``): 403, audited, unless the role has it."""
    if not user.has(permission):
        raise Forbidden(
            f"{user.username} ({user.role}) may not {permission}",
            username=user.username,
            site_id=None,
            permission=str(permission),
        )


def site_clause(
    user: Principal, column: Any, permission: Permission = Permission.READ
) -> ColumnElement[bool]:
    """A WHERE clause keeping rows whose ``column`` (a site id) is one of the user's sites."""
    sites = user.sites_with(permission)
    if sites is None:
        return true()
    clause: ColumnElement[bool] = column.in_(sorted(sites))
    return clause
