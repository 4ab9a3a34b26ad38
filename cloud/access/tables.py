"""SQLAlchemy tables of the access feature (``Mapped``); API schemas live in :mod:`cloud.access.schemas`.

``access_sites``        one row per site: the credential list's latest version, how far back the change
                        log reaches (``log_floor``) and the site's PIN salt (None: the site id)
``access_credentials``  the current credentials; ``version`` is the site version of their last change
``access_changes``      the change log: which credential changed at which version, upsert or delete
``access_gateway_sync`` per gateway: the version it last reported (``up/sync``) and the last sync we sent
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud.tables import Base

__all__ = ["AccessSite", "CredentialChange", "CredentialRow", "GatewaySync"]


class AccessSite(Base):
    __tablename__ = "access_sites"
    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, doc="Latest version of the site's credential list")
    log_floor: Mapped[int] = mapped_column(
        BigInteger, doc="A delta can be built from any version >= this (the change log reaches back to it)"
    )
    pin_salt: Mapped[str | None] = mapped_column(String(128), doc="None: the site id, as the gateway")
    updated_at: Mapped[datetime]


class CredentialRow(Base):
    __tablename__ = "access_credentials"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(128), doc="Card number, normalised plate, or hash_secret()")
    holder: Mapped[str] = mapped_column(String(128))
    doors: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    max_uses: Mapped[int | None] = mapped_column(Integer)
    revoked: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(BigInteger, doc="Site version of the last change to this credential")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_access_credentials_site_id", "site_id", "id"),
        Index("ix_access_credentials_site_value", "site_id", "kind", "value"),
    )


class CredentialChange(Base):
    """Append-only (pruned from the oldest end): one row per credential per version."""

    __tablename__ = "access_changes"
    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    credential_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    op: Mapped[str] = mapped_column(String(8), doc="upsert | delete")
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime]


class GatewaySync(Base):
    __tablename__ = "access_gateway_sync"
    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    reported_version: Mapped[int | None] = mapped_column(BigInteger)
    reported_count: Mapped[int | None] = mapped_column(Integer)
    reported_at: Mapped[datetime | None]
    rejected: Mapped[str | None] = mapped_column(Text, doc="Why the gateway refused our last sync")
    sent_version: Mapped[int | None] = mapped_column(BigInteger)
    sent_full: Mapped[bool] = mapped_column(Boolean, default=False)
    sent_at: Mapped[datetime | None]
