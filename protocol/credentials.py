"""Access credentials as the cloud sends them to a gateway, and the gateway's answer about its version.

The cloud keeps one version number per gateway's credential list; every change makes a new version.
It sends a :class:`CredentialSync` on ``down/credentials``: a delta from ``from_version`` to
``to_version`` (applied only by a gateway that is at ``from_version``) or a full list (``full=true``,
which replaces everything). The gateway publishes :class:`SyncState` on ``up/sync`` when it connects
and after every sync it applies or refuses, so the cloud always knows what to send next.

Secrets never travel in clear: PINs and visitor codes are sent as :func:`hash_secret` digests, salted
per site, and the gateway hashes what a keypad reports the same way before comparing. Card numbers
and plates are identifiers, not secrets, and travel as they are printed (normalised by
:func:`normalise_plate` / compared as strings).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, model_validator

from protocol.models import PROTOCOL_VERSION, AwareDatetime, Ident, WireModel

__all__ = [
    "HASHED_KINDS",
    "MAX_SYNC_CREDENTIALS",
    "Credential",
    "CredentialKind",
    "CredentialSync",
    "SyncState",
    "hash_secret",
    "normalise_plate",
]

CredentialKind = Literal["card", "pin", "plate", "visitor_pin", "visitor_qr"]
# Kinds whose value is a secret someone types or shows: stored and sent only as a salted digest.
HASHED_KINDS: frozenset[str] = frozenset({"pin", "visitor_pin", "visitor_qr"})
MAX_SYNC_CREDENTIALS = 50_000
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PLATE_NOISE = re.compile(r"[\s·.\-]")


def hash_secret(salt: str, secret: str) -> str:
    """The digest a PIN or visitor code is stored as: ``sha256:<hex of sha256(salt ":" secret)>``."""
    return "sha256:" + hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def normalise_plate(plate: str) -> str:
    """``粤B·12345`` / ``粤b 12345`` -> ``粤B12345``: cameras and operators punctuate plates differently."""
    return _PLATE_NOISE.sub("", plate).upper()


class Credential(WireModel):
    """One thing that opens doors or gates: a card, a PIN, a plate, or a visitor pass."""

    id: str = Field(min_length=1, max_length=64)
    kind: CredentialKind
    value: str = Field(
        min_length=1,
        max_length=128,
        description="Card number or plate as printed; for pin/visitor_* the hash_secret() digest",
    )
    holder: str = Field(default="", max_length=128, description="Resident (name, apartment) or visitor")
    doors: list[Ident] = Field(default_factory=list, description="Device ids it opens (doors and gates)")
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    max_uses: int | None = Field(default=None, ge=1, description="Visitor passes: how many entries")
    revoked: bool = False

    @model_validator(mode="after")
    def _check(self) -> Credential:
        if self.kind in HASHED_KINDS and not _DIGEST.match(self.value):
            raise ValueError(f"a {self.kind} travels hashed (sha256:<64 hex>), never in clear")
        if self.kind == "plate" and self.value != normalise_plate(self.value):
            raise ValueError(f"plate {self.value!r} must be normalised ({normalise_plate(self.value)!r})")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class CredentialSync(WireModel):
    """A change to one gateway's credential list (cloud -> gateway, ``down/credentials``)."""

    v: Literal[1] = PROTOCOL_VERSION
    site_id: Ident
    gateway_id: Ident
    from_version: int = Field(ge=0, description="The version this delta applies to (ignored if full)")
    to_version: int = Field(ge=1)
    full: bool = Field(default=False, description="Replace the whole list with upserts")
    upserts: list[Credential] = Field(default_factory=list, max_length=MAX_SYNC_CREDENTIALS)
    deletes: list[str] = Field(default_factory=list, max_length=MAX_SYNC_CREDENTIALS)

    @model_validator(mode="after")
    def _check(self) -> CredentialSync:
        if not self.full and self.to_version <= self.from_version:
            raise ValueError("to_version must be greater than from_version")
        if self.full and self.deletes:
            raise ValueError("a full sync lists what to keep; deletes make no sense in it")
        ids = [c.id for c in self.upserts]
        if len(ids) != len(set(ids)):
            raise ValueError("a credential id appears twice in upserts")
        return self


class SyncState(WireModel):
    """The gateway's credential list version (gateway -> cloud, ``up/sync``)."""

    v: Literal[1] = PROTOCOL_VERSION
    site_id: Ident
    gateway_id: Ident
    version: int = Field(ge=0)
    credentials: int = Field(ge=0, description="How many credentials the gateway holds")
    at: AwareDatetime
    rejected: str | None = Field(
        default=None, max_length=500, description="Why the last sync was not applied (gap, wrong site)"
    )
