"""Roles, permissions and who holds them: the one table that says who may do what, where.

::

    role       sites        permissions
    admin      all sites    every permission, including manage_users
    operator   its sites    read, command, work_orders, access
    installer  its sites    read, register_gateway, commission
    viewer     its sites    read

A :class:`Principal` is an authenticated caller (a login session or an API token acting as its user).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = ["ROLE_PERMISSIONS", "Permission", "Principal", "Role"]


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    INSTALLER = "installer"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"
    """See the site's gateways, devices, events, readings, commands and the live stream."""
    COMMAND = "command"
    """Issue commands to the site's devices (open gates, release doors)."""
    WORK_ORDERS = "work_orders"
    """Create and change the site's work orders."""
    ACCESS = "access"
    """Manage the site's access credentials (cards, PINs, plates)."""
    REGISTER_GATEWAY = "register_gateway"
    """Register a gateway at the site and receive its broker credentials."""
    COMMISSION = "commission"
    """Commission devices at the site."""
    MANAGE_USERS = "manage_users"
    """Create, change and disable accounts; see the auth audit log. Admin only, not site-scoped."""


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {Permission.READ, Permission.COMMAND, Permission.WORK_ORDERS, Permission.ACCESS}
    ),
    Role.INSTALLER: frozenset({Permission.READ, Permission.REGISTER_GATEWAY, Permission.COMMISSION}),
    Role.VIEWER: frozenset({Permission.READ}),
}
ALL_SITES_ROLES = frozenset({Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: their account, role and sites, and the token they came with."""

    user_id: str
    username: str
    role: Role
    sites: frozenset[str]
    token_id: str
    via: Literal["session", "api"]

    @property
    def all_sites(self) -> bool:
        return self.role in ALL_SITES_ROLES

    def has(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def can(self, permission: Permission, site_id: str | None) -> bool:
        """May this caller do ``permission`` at ``site_id``? (``None``: not about one site)."""
        if not self.has(permission):
            return False
        if self.all_sites:
            return True
        return site_id is not None and site_id in self.sites

    def sites_with(self, permission: Permission = Permission.READ) -> frozenset[str] | None:
        """The sites where this caller has ``permission``; ``None`` means every site."""
        if not self.has(permission):
            return frozenset()
        return None if self.all_sites else self.sites
