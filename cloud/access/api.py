"""Access API: a site's credentials, visitor passes, PIN salt, and where each gateway's copy stands.

Reading needs ``read`` at the site; every change needs ``access`` there and is attributed to the caller.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status

from cloud.access.schemas import (
    AccessSettingsIn,
    AccessSettingsOut,
    CredentialCreate,
    CredentialOut,
    CredentialPage,
    CredentialPatch,
    GatewaySyncOut,
    PassRefusal,
    PassUse,
    SiteSyncOut,
    VisitorPassCreate,
    VisitorPassCreated,
    VisitorPassOut,
)
from cloud.access.service import AccessService
from cloud.access.tables import CredentialRow
from cloud.api.deps import ServicesDep
from cloud.auth.deps import CurrentUser, require_site
from cloud.auth.permissions import Permission
from cloud.errors import CloudError
from cloud.schemas import ErrorOut
from protocol.credentials import HASHED_KINDS

__all__ = ["router"]

SITES = "/sites/{site_id}"
router = APIRouter(tags=["access"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
}

SiteId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
CredentialIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class BadCursor(CloudError):
    status = 400
    code = "bad_cursor"


async def get_access(services: ServicesDep) -> AccessService:
    access: AccessService = services.extras["access"]
    return access


AccessDep = Annotated[AccessService, Depends(get_access)]


def credential_out(row: CredentialRow) -> CredentialOut:
    out = CredentialOut.model_validate(row)
    # Digests of short PINs are cheap to reverse with the salt; they never leave the cloud but to gateways.
    return out.model_copy(update={"value": None}) if row.kind in HASHED_KINDS else out


@router.post(
    f"{SITES}/credentials",
    status_code=status.HTTP_201_CREATED,
    response_model=CredentialOut,
    responses=_ERRORS,
)
async def create_credential(
    site_id: SiteId, body: CredentialCreate, user: CurrentUser, access: AccessDep
) -> CredentialOut:
    """A resident's card, PIN (stored hashed) or plate; reaches the site's online gateways in seconds."""
    require_site(user, site_id, Permission.ACCESS)
    return credential_out(await access.create(site_id, body, user.username))


@router.get(f"{SITES}/credentials", response_model=CredentialPage, responses=_ERRORS)
async def list_credentials(
    *,
    site_id: SiteId,
    user: CurrentUser,
    access: AccessDep,
    kind: Annotated[str | None, Query(pattern=r"^(card|pin|plate|visitor_pin|visitor_qr)$")] = None,
    revoked: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> CredentialPage:
    require_site(user, site_id, Permission.READ)
    after = _decode(cursor) if cursor else None
    rows, version, more = await access.list(site_id, kind=kind, revoked=revoked, limit=limit, after=after)
    next_cursor = _encode(rows[-1].id) if more and rows else None
    return CredentialPage(items=[credential_out(r) for r in rows], version=version, next_cursor=next_cursor)


@router.get(f"{SITES}/credentials/{{credential_id}}", response_model=CredentialOut, responses=_ERRORS)
async def get_credential(
    site_id: SiteId, credential_id: CredentialIdPath, user: CurrentUser, access: AccessDep
) -> CredentialOut:
    require_site(user, site_id, Permission.READ)
    return credential_out(await access.get(site_id, credential_id))


@router.patch(f"{SITES}/credentials/{{credential_id}}", response_model=CredentialOut, responses=_ERRORS)
async def patch_credential(
    site_id: SiteId,
    credential_id: CredentialIdPath,
    body: CredentialPatch,
    user: CurrentUser,
    access: AccessDep,
) -> CredentialOut:
    """Change fields; ``{"revoked": true}`` revokes (the gateway then denies it as ``revoked``)."""
    require_site(user, site_id, Permission.ACCESS)
    return credential_out(await access.update(site_id, credential_id, body, user.username))


@router.delete(
    f"{SITES}/credentials/{{credential_id}}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS
)
async def delete_credential(
    site_id: SiteId, credential_id: CredentialIdPath, user: CurrentUser, access: AccessDep
) -> Response:
    """Remove from the site and its gateways (then denied as unknown). Revoke instead to keep a record."""
    require_site(user, site_id, Permission.ACCESS)
    await access.delete(site_id, credential_id, user.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    f"{SITES}/visitor-passes",
    status_code=status.HTTP_201_CREATED,
    response_model=VisitorPassCreated,
    responses=_ERRORS,
)
async def issue_visitor_pass(
    site_id: SiteId, body: VisitorPassCreate, user: CurrentUser, access: AccessDep
) -> VisitorPassCreated:
    """A PIN or QR code for some doors in a time window, for ``max_uses`` entries. The code is in this
    answer only: the cloud keeps its salted hash."""
    require_site(user, site_id, Permission.ACCESS)
    row, code = await access.issue_pass(site_id, body, user.username)
    return VisitorPassCreated(**credential_out(row).model_dump(), code=code)


@router.get(f"{SITES}/visitor-passes/{{credential_id}}", response_model=VisitorPassOut, responses=_ERRORS)
async def get_visitor_pass(
    site_id: SiteId, credential_id: CredentialIdPath, user: CurrentUser, access: AccessDep
) -> VisitorPassOut:
    """The pass with the entries and refusals its gateways reported (``access.granted``/``denied``)."""
    require_site(user, site_id, Permission.READ)
    row, events = await access.pass_events(site_id, credential_id)
    uses = [
        PassUse(
            event_id=e.id,
            device_id=e.device_id,
            at=e.ts,
            uses=e.data.get("uses"),
            reader=e.data.get("reader"),
        )
        for e in events
        if e.type == "access.granted"
    ]
    refusals = [
        PassRefusal(event_id=e.id, device_id=e.device_id, at=e.ts, reason=e.data.get("reason"))
        for e in events
        if e.type == "access.denied"
    ]
    return VisitorPassOut(**credential_out(row).model_dump(), used=len(uses), uses=uses, refusals=refusals)


@router.get(f"{SITES}/access-settings", response_model=AccessSettingsOut, responses=_ERRORS)
async def get_access_settings(site_id: SiteId, user: CurrentUser, access: AccessDep) -> AccessSettingsOut:
    require_site(user, site_id, Permission.READ)
    site = await access.site(site_id)
    return AccessSettingsOut(site_id=site_id, custom_salt=site.pin_salt is not None, version=site.version)


@router.put(f"{SITES}/access-settings", response_model=AccessSettingsOut, responses=_ERRORS)
async def put_access_settings(
    site_id: SiteId, body: AccessSettingsIn, user: CurrentUser, access: AccessDep
) -> AccessSettingsOut:
    """The PIN salt, which must equal the gateways' ``access.pin_salt``; write-only."""
    require_site(user, site_id, Permission.ACCESS)
    salt = body.pin_salt.get_secret_value() if body.pin_salt is not None else None
    site = await access.set_salt(site_id, salt)
    return AccessSettingsOut(site_id=site_id, custom_salt=site.pin_salt is not None, version=site.version)


@router.get(f"{SITES}/credential-sync", response_model=SiteSyncOut, responses=_ERRORS)
async def get_credential_sync(site_id: SiteId, user: CurrentUser, access: AccessDep) -> SiteSyncOut:
    """The site's list version and, per gateway, the version it last reported and the last sync sent."""
    require_site(user, site_id, Permission.READ)
    site, count, gateways = await access.sync_overview(site_id)
    return SiteSyncOut(
        site_id=site_id,
        version=site.version,
        log_floor=site.log_floor,
        credentials=count,
        gateways=[
            GatewaySyncOut(
                gateway_id=g.gateway_id,
                online=online,
                reported_version=g.reported_version,
                reported_count=g.reported_count,
                reported_at=g.reported_at,
                rejected=g.rejected,
                sent_version=g.sent_version,
                sent_full=g.sent_full,
                sent_at=g.sent_at,
                in_sync=g.reported_version == site.version and g.reported_count == count,
            )
            for g, online in gateways
        ],
    )


def _encode(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor is not one this API returned") from None
