"""Account tables (``Mapped``), on the shared :class:`cloud.tables.Base`; migration ``0003_auth``.

Passwords are stored as argon2id hashes, tokens as SHA-256 of the token (tokens are 256 random bits,
so a plain hash is enough and lets a request find its token with one indexed lookup).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud.tables import Base, BigId


class UserRow(Base):
    __tablename__ = "auth_users"
    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TokenRow(Base):
    """A login session (``kind='session'``, short-lived) or an API token (``kind='api'``, named)."""

    __tablename__ = "auth_tokens"
    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(26), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AuthAuditRow(Base):
    """Append-only: logins, refusals (403), token and account changes, gateway registrations."""

    __tablename__ = "auth_audit"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    username: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    site_id: Mapped[str | None] = mapped_column(String(64))
    permission: Mapped[str | None] = mapped_column(String(32))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_auth_audit_at", "at"), Index("ix_auth_audit_username_at", "username", "at"))
