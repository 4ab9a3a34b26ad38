"""Accounts, roles scoped to sites, tokens, login throttling, gateway registration (issue #7).

For other routers: ``CurrentUser`` (the caller), :func:`require_site` (403 + audit unless the caller has
the permission at that site), :func:`require` (site-less permissions), :func:`site_clause` (filter a
list query to the caller's sites), :class:`Permission` and :class:`Role` (the table in
:mod:`cloud.auth.permissions`). For the CLI and the demo: :func:`create_user`, :func:`ensure_demo_admin`.
"""

from cloud.auth.admin import create_user, ensure_demo_admin
from cloud.auth.deps import CurrentUser, current_user, require, require_site, site_clause
from cloud.auth.errors import Forbidden, TooManyAttempts, Unauthorized
from cloud.auth.permissions import ROLE_PERMISSIONS, Permission, Principal, Role

__all__ = [
    "ROLE_PERMISSIONS",
    "CurrentUser",
    "Forbidden",
    "Permission",
    "Principal",
    "Role",
    "TooManyAttempts",
    "Unauthorized",
    "create_user",
    "current_user",
    "ensure_demo_admin",
    "require",
    "require_site",
    "site_clause",
]
