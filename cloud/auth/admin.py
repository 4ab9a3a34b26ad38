"""Accounts from outside the running service: ``steward cloud create-admin`` and the demo's admin.

Each call opens its own engine on ``settings.database_url``, brings the schema to ``heads`` (a no-op
when the cloud already did) and disposes of the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.auth.passwords import generate_password
from cloud.auth.permissions import Role
from cloud.auth.service import upsert_user
from cloud.db import make_engine, make_sessions, upgrade
from cloud.settings import CloudSettings
from protocol.models import utcnow

__all__ = ["DEMO_ADMIN", "create_user", "ensure_demo_admin"]

DEMO_ADMIN = "admin"


async def create_user(
    settings: CloudSettings,
    username: str,
    password: str | None = None,
    role: Role = Role.ADMIN,
    sites: Sequence[str] = (),
    *,
    replace: bool = False,
) -> str:
    """Create an account (or with ``replace`` reset it); returns the password (generated if None).
    Raises :class:`cloud.auth.errors.Conflict` if the username exists and ``replace`` is false."""
    password = password or generate_password()
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        async with make_sessions(engine)() as session, session.begin():
            await upsert_user(session, username, password, role, sites, replace=replace, now=utcnow())
    finally:
        await engine.dispose()
    return password


async def ensure_demo_admin(settings: CloudSettings) -> tuple[str, str]:
    """The demo's admin ``("admin", <fresh password>)``: created, or its password reset, on every run
    (passwords are stored hashed, so an old one cannot be shown again)."""
    password = await create_user(settings, DEMO_ADMIN, generate_password(), Role.ADMIN, replace=True)
    return DEMO_ADMIN, password
