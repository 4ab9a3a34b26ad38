"""API schemas of the access feature (pydantic), kept apart from the tables in :mod:`cloud.access.tables`.

PINs and visitor codes come in clear and never go out again: the API returns ``value`` for cards and
plates only, and a visitor pass's ``code`` once, in the answer that created it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from protocol.models import AwareDatetime
from protocol.topics import check_segment

__all__ = [
    "AccessSettingsIn",
    "AccessSettingsOut",
    "CredentialCreate",
    "CredentialOut",
    "CredentialPage",
    "CredentialPatch",
    "GatewaySyncOut",
    "PassRefusal",
    "PassUse",
    "SiteSyncOut",
    "VisitorPassCreate",
    "VisitorPassCreated",
    "VisitorPassOut",
]

DeviceId = Annotated[str, AfterValidator(lambda v: check_segment(v, "device id"))]
CredentialId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Doors = Annotated[list[DeviceId], Field(min_length=1, max_length=200, description="Door/gate device ids")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CredentialCreate(_In):
    """A resident's card, PIN or vehicle plate. Visitor passes: ``POST .../visitor-passes``."""

    id: CredentialId | None = Field(default=None, description="Default: generated; give one to import")
    kind: Literal["card", "pin", "plate"]
    value: str = Field(
        min_length=1,
        max_length=64,
        description="Card number as printed or as the reader reports it; the PIN (stored hashed); the plate",
        examples=["017-12345"],
    )
    holder: str = Field(default="", max_length=128, examples=["Li Wei, 3-2-501"])
    doors: Doors
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    max_uses: int | None = Field(default=None, ge=1, le=100_000)
    revoked: bool = False


class CredentialPatch(_In):
    """Only the fields given change; ``null`` clears ``valid_from``/``valid_until``/``max_uses``."""

    value: str | None = Field(default=None, min_length=1, max_length=64, description="New card/PIN/plate")
    holder: str | None = Field(default=None, max_length=128)
    doors: Doors | None = None
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    max_uses: int | None = Field(default=None, ge=1, le=100_000)
    revoked: bool | None = None


class CredentialOut(_Out):
    id: str
    site_id: str
    kind: str
    value: str | None = Field(description="Cards and plates only; PINs and visitor codes are never shown")
    holder: str
    doors: list[str]
    valid_from: datetime | None
    valid_until: datetime | None
    max_uses: int | None
    revoked: bool
    version: int = Field(description="Site list version of this credential's last change")
    created_by: str
    created_at: datetime
    updated_at: datetime


class CredentialPage(BaseModel):
    items: list[CredentialOut]
    version: int = Field(description="The site's credential list version")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class VisitorPassCreate(_In):
    kind: Literal["pin", "qr"] = Field(default="qr", description="A keypad PIN or a QR code value")
    holder: str = Field(default="visitor", max_length=128, examples=["visitor of 3-2-501"])
    doors: Doors
    valid_from: AwareDatetime | None = Field(default=None, description="Default: now")
    valid_until: AwareDatetime
    max_uses: int = Field(default=1, ge=1, le=1000, description="Entries allowed, across all its doors")
    pin_digits: int = Field(default=6, ge=4, le=10)


class PassUse(BaseModel):
    event_id: str
    device_id: str
    at: datetime
    uses: int | None = Field(description="The count the gateway recorded with this entry")
    reader: str | None = None


class PassRefusal(BaseModel):
    event_id: str
    device_id: str
    at: datetime
    reason: str | None


class VisitorPassOut(CredentialOut):
    used: int = Field(description="Entries the cloud has heard of (events arrive after the fact)")
    uses: list[PassUse]
    refusals: list[PassRefusal]


class VisitorPassCreated(CredentialOut):
    code: str = Field(description="The PIN or QR code value. Shown this once; only its hash is stored")


class AccessSettingsIn(_In):
    pin_salt: SecretStr | None = Field(
        description="Must equal the gateways' access.pin_salt; null: the site id (the gateways' default)",
        min_length=8,
        max_length=128,
    )


class AccessSettingsOut(BaseModel):
    site_id: str
    custom_salt: bool = Field(description="False: PINs are salted with the site id")
    version: int


class GatewaySyncOut(_Out):
    gateway_id: str
    online: bool | None
    reported_version: int | None
    reported_count: int | None
    reported_at: datetime | None
    rejected: str | None
    sent_version: int | None
    sent_full: bool
    sent_at: datetime | None
    in_sync: bool


class SiteSyncOut(BaseModel):
    site_id: str
    version: int
    log_floor: int
    credentials: int
    gateways: list[GatewaySyncOut]
