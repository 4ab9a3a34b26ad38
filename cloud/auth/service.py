"""Accounts, logins and tokens. Route handlers call this; it owns the sessions and the clock.

Tokens are opaque: ``stw_s_<43 chars>`` for a login session, ``stw_a_<43 chars>`` for an API token,
256 random bits each. Only their SHA-256 is stored, so a copy of the database does not let anyone in;
a token is valid while its row is neither expired nor revoked and its user is not disabled, which makes
every token revocable at once (logout, revoke, disable). The prefixes let secret scanners spot leaks.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from cloud import db
from cloud.auth.errors import BadCredentials, Conflict, TooManyAttempts
from cloud.auth.passwords import hash_password, needs_rehash, verify_password
from cloud.auth.permissions import Principal, Role
from cloud.auth.tables import AuthAuditRow, TokenRow, UserRow
from cloud.auth.throttle import LoginThrottle
from cloud.db import make_read_sessions
from cloud.errors import NotFound
from cloud.settings import CloudSettings
from protocol.ids import new_id
from protocol.models import utcnow

__all__ = ["AuthService", "hash_token", "normalize_username", "upsert_user"]

log = structlog.get_logger("steward.cloud.auth")
TokenKind = Literal["session", "api"]
_PREFIX: dict[str, str] = {"session": "stw_s_", "api": "stw_a_"}
_TOUCH_EVERY = timedelta(seconds=60)  # how stale an API token's last_used_at may get
# How long one instance trusts a token it has just checked. A console's long-polls and a command's
# POST and GETs come in bursts of the same token; this bounds how late another instance (or
# `steward cloud user`) revoking it takes effect here. This instance's own revocations clear it at once.
_CACHE_S = 1.0
_CACHE_MAX = 10_000


def normalize_username(username: str) -> str:
    return username.strip().lower()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(kind: TokenKind) -> str:
    return _PREFIX[kind] + secrets.token_urlsafe(32)


async def upsert_user(
    session: AsyncSession,
    username: str,
    password: str,
    role: Role,
    sites: Sequence[str] = (),
    *,
    replace: bool,
    now: datetime,
) -> UserRow:
    """Create the account, or with ``replace`` reset an existing one's password, role and sites (and
    re-enable it); without ``replace`` an existing username is a :class:`Conflict`."""
    username = normalize_username(username)
    row = await session.scalar(select(UserRow).where(UserRow.username == username))
    if row is not None and not replace:
        raise Conflict(f"user {username!r} exists")
    if row is None:
        row = UserRow(id=new_id(), username=username, created_at=now)
        session.add(row)
    row.password_hash = hash_password(password)
    row.role = role.value
    row.sites = sorted(set(sites))
    row.disabled = False
    row.updated_at = now
    return row


class AuthService:
    def __init__(
        self,
        settings: CloudSettings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # Every request authenticates: on SQLite a write session would queue each one behind ingest's
        # write lock. Lookups read; only a due last_used_at touch writes.
        self.read_sessions = make_read_sessions(sessions)
        # token hash -> (principal, token expiry, monotonic time it was checked)
        self._checked: dict[str, tuple[Principal, datetime | None, float]] = {}
        self._generation = 0
        self.clock = clock  # tests replace it to move time
        self.throttle = LoginThrottle(
            max_per_user=settings.login_max_failures,
            max_per_ip=settings.login_max_failures_per_ip,
            window_s=settings.login_window_s,
            clock=lambda: self.clock().timestamp(),
        )
        self.command_public_key: str | None = None  # set by the feature's setup from the signing key

    # ---- audit -----------------------------------------------------------------------------------
    async def audit(
        self,
        action: str,
        *,
        username: str | None,
        site_id: str | None = None,
        permission: str | None = None,
        client_ip: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Log and store one auth event; a failing store is logged, never hidden from the log."""
        log.info(
            f"auth.{action}",
            user=username,
            site=site_id,
            permission=permission,
            ip=client_ip,
            detail=detail,
        )
        row = AuthAuditRow(
            at=self.clock(),
            username=(username or "")[:64] or None,
            action=action,
            site_id=site_id,
            permission=permission,
            client_ip=client_ip,
            detail=detail,
        )
        async with self.sessions() as session, session.begin():
            session.add(row)

    async def audit_log(self, *, limit: int, username: str | None = None) -> list[AuthAuditRow]:
        query = select(AuthAuditRow).order_by(AuthAuditRow.id.desc()).limit(limit)
        if username:
            query = query.where(AuthAuditRow.username == normalize_username(username))
        async with self.read_sessions() as session:
            return list((await session.execute(query)).scalars())

    # ---- login and tokens ------------------------------------------------------------------------
    async def login(self, username: str, password: str, client_ip: str | None) -> tuple[str, UserRow]:
        """A new session token for the user, or :class:`BadCredentials` / :class:`TooManyAttempts`."""
        name = normalize_username(username)
        wait = self.throttle.retry_after(name, client_ip)
        if wait > 0:
            await self.audit("login_throttled", username=name, client_ip=client_ip)
            raise TooManyAttempts(wait)
        async with self.read_sessions() as session:
            user = await session.scalar(select(UserRow).where(UserRow.username == name))
        ok = await verify_password(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            self.throttle.failed(name, client_ip)
            reason = "unknown user" if user is None else ("disabled" if ok else "wrong password")
            await self.audit("login_failed", username=name, client_ip=client_ip, detail=reason)
            raise BadCredentials
        self.throttle.succeeded(name)
        now = self.clock()
        token = _new_token("session")
        async with self.sessions() as session, session.begin():
            if needs_rehash(user.password_hash):
                await session.execute(
                    update(UserRow).where(UserRow.id == user.id).values(password_hash=hash_password(password))
                )
            session.add(
                TokenRow(
                    id=new_id(),
                    token_hash=hash_token(token),
                    user_id=user.id,
                    kind="session",
                    name=None,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.access_token_ttl_s),
                )
            )
        await self.audit("login_ok", username=name, client_ip=client_ip)
        return token, user

    async def authenticate(self, token: str | None) -> Principal | None:
        """The caller a token stands for, or None if it is unknown, expired, revoked or its user
        disabled."""
        if not token or not token.startswith(tuple(_PREFIX.values())) or len(token) > 200:
            return None
        now = self.clock()
        token_hash = hash_token(token)
        hit = self._checked.get(token_hash)
        if hit is not None:
            principal, expires_at, checked = hit
            if time.monotonic() - checked < _CACHE_S and (expires_at is None or expires_at > now):
                return principal
            del self._checked[token_hash]
        generation = self._generation
        # On every request whose token this instance has not checked in the last second: one read
        # transaction in one step (cloud.db.read), not a session's round trips.
        found = await db.read(self.sessions, _token_and_user, token_hash)
        if found is None:
            return None
        row, user = found
        if row.revoked_at is not None or user.disabled:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.kind == "api" and (row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY):
            async with self.sessions() as session, session.begin():
                await session.execute(update(TokenRow).where(TokenRow.id == row.id).values(last_used_at=now))
        principal = Principal(
            user_id=user.id,
            username=user.username,
            role=Role(user.role),
            sites=frozenset(user.sites or ()),
            token_id=row.id,
            via="api" if row.kind == "api" else "session",
        )
        if generation == self._generation:
            if len(self._checked) >= _CACHE_MAX:
                self._checked.clear()
            self._checked[token_hash] = (principal, row.expires_at, time.monotonic())
        return principal

    def _forget_checked(self) -> None:
        """Around a change to tokens or users (before it and after its commit): nothing checked
        before may be trusted, nor cached by a check that was reading while it committed."""
        self._checked.clear()
        self._generation += 1

    async def revoke_current(self, principal: Principal) -> None:
        self._forget_checked()
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(TokenRow)
                .where(TokenRow.id == principal.token_id, TokenRow.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        self._forget_checked()

    async def create_api_token(
        self, principal: Principal, name: str, expires_in_days: float | None
    ) -> tuple[str, TokenRow]:
        now = self.clock()
        token = _new_token("api")
        row = TokenRow(
            id=new_id(),
            token_hash=hash_token(token),
            user_id=principal.user_id,
            kind="api",
            name=name,
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        async with self.sessions() as session, session.begin():
            session.add(row)
        await self.audit("token_created", username=principal.username, detail=f"{row.id} {name!r}")
        return token, row

    async def list_api_tokens(self, principal: Principal, *, everyone: bool) -> list[tuple[TokenRow, str]]:
        query = (
            select(TokenRow, UserRow.username)
            .join(UserRow, UserRow.id == TokenRow.user_id)
            .where(TokenRow.kind == "api")
            .order_by(TokenRow.created_at, TokenRow.id)
        )
        if not everyone:
            query = query.where(TokenRow.user_id == principal.user_id)
        async with self.read_sessions() as session:
            return [(t, u) for t, u in (await session.execute(query)).all()]

    async def revoke_api_token(self, principal: Principal, token_id: str, *, any_user: bool) -> TokenRow:
        self._forget_checked()
        async with self.sessions() as session, session.begin():
            row = await session.get(TokenRow, token_id)
            if row is None or row.kind != "api" or (row.user_id != principal.user_id and not any_user):
                raise NotFound(f"no API token {token_id!r}")  # another user's token: not even its existence
            if row.revoked_at is None:
                row.revoked_at = self.clock()
        self._forget_checked()
        await self.audit("token_revoked", username=principal.username, detail=token_id)
        return row

    # ---- accounts --------------------------------------------------------------------------------
    async def list_users(self) -> list[UserRow]:
        async with self.read_sessions() as session:
            return list((await session.execute(select(UserRow).order_by(UserRow.username))).scalars())

    async def create_user(
        self, by: Principal, username: str, password: str, role: Role, sites: Sequence[str]
    ) -> UserRow:
        async with self.sessions() as session, session.begin():
            row = await upsert_user(session, username, password, role, sites, replace=False, now=self.clock())
        await self.audit(
            "user_created", username=by.username, detail=f"{row.username} role={role} sites={row.sites}"
        )
        return row

    async def update_user(self, by: Principal, username: str, changes: dict[str, Any]) -> UserRow:
        """Change role, sites, password or disabled; a password change or disabling ends the user's
        login sessions (API tokens stop working while disabled)."""
        self._forget_checked()
        name = normalize_username(username)
        now = self.clock()
        async with self.sessions() as session, session.begin():
            row = await session.scalar(select(UserRow).where(UserRow.username == name))
            if row is None:
                raise NotFound(f"no user {name!r}")
            if row.id == by.user_id and (
                changes.get("disabled") or changes.get("role") not in (None, Role.ADMIN)
            ):
                raise Conflict("an admin cannot disable or demote their own account")
            if changes.get("role") is not None:
                row.role = Role(changes["role"]).value
            if changes.get("sites") is not None:
                row.sites = sorted(set(changes["sites"]))
            if changes.get("disabled") is not None:
                row.disabled = bool(changes["disabled"])
            if changes.get("password"):
                row.password_hash = hash_password(changes["password"])
            if changes.get("password") or changes.get("disabled"):
                await session.execute(
                    update(TokenRow)
                    .where(
                        TokenRow.user_id == row.id, TokenRow.kind == "session", TokenRow.revoked_at.is_(None)
                    )
                    .values(revoked_at=now)
                )
            row.updated_at = now
        self._forget_checked()
        shown = {k: v for k, v in changes.items() if k != "password" and v is not None}
        if changes.get("password"):
            shown["password"] = "changed"
        await self.audit("user_updated", username=by.username, detail=f"{name} {shown}")
        return row


def _token_and_user(conn: Connection, token_hash: str) -> tuple[TokenRow, UserRow] | None:
    with Session(bind=conn) as session:
        query = select(TokenRow, UserRow).join(UserRow, UserRow.id == TokenRow.user_id)
        found = session.execute(query.where(TokenRow.token_hash == token_hash)).first()
    return None if found is None else (found[0], found[1])
