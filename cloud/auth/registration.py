"""Gateway registration: an installer registers a gateway at a site and gets its broker credentials.

The broker accounts (``BrokerAccounts``, hashes only) live in ``broker_accounts_file``; registration
adds or rotates one gateway's account there, and ``steward cloud broker-config`` renders the file as
Mosquitto's password/ACL/conf files (Mosquitto rereads them on SIGHUP). The file is updated under an
exclusive ``flock`` and replaced atomically, so concurrent registrations (also from several cloud
processes on one host) never lose each other's accounts.

The cloud's own account: with ``broker_password`` set, its hash in the file follows that password, so
the Mosquitto config always lets this cloud in. Without it the account gets a random password nobody
knows until ``steward cloud broker-config --rotate-cloud`` prints a new one.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.auth.deps import require_site
from cloud.auth.errors import Conflict
from cloud.auth.permissions import Permission, Principal
from cloud.settings import CloudSettings
from cloud.tables import Gateway, Site
from protocol.models import utcnow
from steward.broker_auth import (
    DEFAULT_CLOUD_USERNAME,
    BrokerAccounts,
    BrokerUser,
    Role,
    check_password,
    gateway_username,
    hash_password,
    provision,
)

__all__ = [
    "Registrar",
    "Registration",
    "accounts_path",
    "cloud_username",
    "load_accounts",
    "provision_gateway",
    "registered_gateways",
    "sync_cloud_account",
    "update_accounts",
]

log = structlog.get_logger("steward.cloud.auth")
T = TypeVar("T")


def accounts_path(settings: CloudSettings) -> Path:
    return settings.broker_accounts_file or settings.state_dir / "broker-accounts.json"


def cloud_username(settings: CloudSettings) -> str:
    return settings.broker_username or DEFAULT_CLOUD_USERNAME


def load_accounts(settings: CloudSettings) -> BrokerAccounts | None:
    path = accounts_path(settings)
    return BrokerAccounts.load(path) if path.exists() else None


def _save_atomic(accounts: BrokerAccounts, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".broker-accounts-", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(accounts.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def update_accounts(
    settings: CloudSettings, change: Callable[[BrokerAccounts | None], tuple[BrokerAccounts, T]]
) -> T:
    """Read-modify-write the accounts file under an exclusive lock (blocking: run it in a thread)."""
    path = accounts_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = BrokerAccounts.load(path) if path.exists() else None
        accounts, result = change(existing)
        _save_atomic(accounts, path)
        return result
    finally:
        os.close(fd)  # releases the lock


def sync_cloud_account(existing: BrokerAccounts | None, settings: CloudSettings) -> BrokerAccounts | None:
    """Make the cloud's account match ``broker_password`` when one is configured."""
    if settings.broker_password is None:
        return existing
    name, password = cloud_username(settings), settings.broker_password.get_secret_value()
    users = list(existing.users) if existing else []
    current = next((u for u in users if u.username == name), None)
    if current is not None and current.role is Role.CLOUD and check_password(password, current.password_hash):
        return existing
    users = [u for u in users if u.username != name]
    users.append(BrokerUser(username=name, password_hash=hash_password(password), role=Role.CLOUD))
    return BrokerAccounts(topic_prefix=settings.topic_prefix, users=users)


def registered_gateways(accounts: BrokerAccounts | None) -> list[tuple[str, str]]:
    if accounts is None:
        return []
    return [(u.site_id, u.gateway_id) for u in accounts.users if u.role is Role.GATEWAY]  # type: ignore[misc]


def provision_gateway(settings: CloudSettings, site_id: str, gateway_id: str) -> tuple[str, str, bool]:
    """Add (or rotate) one gateway's broker account: ``(username, password, rotated)``. Blocking."""
    username = gateway_username(site_id, gateway_id)

    def change(existing: BrokerAccounts | None) -> tuple[BrokerAccounts, tuple[str, str, bool]]:
        rotated = existing is not None and existing.get(username) is not None
        gateways = registered_gateways(existing)
        if (site_id, gateway_id) not in gateways:
            gateways.append((site_id, gateway_id))
        prov = provision(
            gateways,
            cloud_username=cloud_username(settings),
            topic_prefix=settings.topic_prefix,
            existing=sync_cloud_account(existing, settings),
            rotate=[username],
        )
        return prov.accounts, (username, prov.passwords[username], rotated)

    return update_accounts(settings, change)


@dataclass(frozen=True, slots=True)
class Registration:
    site_id: str
    gateway_id: str
    broker_username: str
    broker_password: str
    rotated: bool


class Registrar:
    def __init__(self, settings: CloudSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._lock = asyncio.Lock()

    async def register(
        self, user: Principal, site_id: str, gateway_id: str, site_name: str | None
    ) -> Registration:
        require_site(user, site_id, Permission.REGISTER_GATEWAY)
        now = utcnow()
        async with self.sessions() as session, session.begin():
            gateway = await session.get(Gateway, gateway_id)
            if gateway is not None and gateway.site_id != site_id:
                require_site(user, gateway.site_id, Permission.REGISTER_GATEWAY)
                raise Conflict(
                    f"gateway id {gateway_id!r} is registered at site {gateway.site_id!r}; "
                    "gateway ids are unique across sites"
                )
            site = await session.get(Site, site_id)
            if site is None:
                session.add(Site(id=site_id, name=site_name, created_at=now, updated_at=now))
            elif site_name and site.name != site_name:
                site.name, site.updated_at = site_name, now
            if gateway is None:
                session.add(
                    Gateway(
                        id=gateway_id,
                        site_id=site_id,
                        online=False,
                        status={},
                        health={},
                        clock_skewed=False,
                    )
                )
        async with self._lock:
            username, password, rotated = await asyncio.to_thread(
                provision_gateway, self.settings, site_id, gateway_id
            )
        return Registration(site_id, gateway_id, username, password, rotated)
