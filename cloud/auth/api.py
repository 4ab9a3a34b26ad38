"""``/api/v1/auth/*`` (login, me, tokens, users, audit, command key) and ``/api/v1/gateways/register``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud.api.deps import ServicesDep
from cloud.auth.deps import CurrentUser, auth_service, require
from cloud.auth.passwords import MIN_PASSWORD_LENGTH, generate_password
from cloud.auth.permissions import ROLE_PERMISSIONS, Permission, Role
from cloud.auth.registration import Registrar
from cloud.auth.service import AuthService
from cloud.auth.tables import UserRow
from cloud.db import make_read_sessions
from cloud.schemas import ErrorOut
from cloud.store import foreign_devices
from protocol.topics import check_segment

router = APIRouter(tags=["auth"])
_USERNAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
_E401: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}}
_E403 = {**_E401, 403: {"model": ErrorOut}}
_E409 = {**_E403, 409: {"model": ErrorOut}}


def _sites(values: list[str]) -> list[str]:
    return [check_segment(v, "site id") for v in values]


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    username: str
    role: Role
    sites: list[str]


class LoginOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")
    user: UserOut


class MeOut(UserOut):
    all_sites: bool
    permissions: list[Permission]
    via: Literal["session", "api"]


class CommandKeyOut(BaseModel):
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="Raw public key, base64: uplink.command_public_key of a site file")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, examples=["door-sync job"])
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="Default: never")


class TokenOut(BaseModel):
    id: str
    name: str | None
    username: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="Shown once; only its hash is stored")


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=_USERNAME)
    password: str | None = Field(
        default=None, min_length=MIN_PASSWORD_LENGTH, max_length=1024, description="Default: generated"
    )
    role: Role
    sites: list[str] = Field(default_factory=list)

    _check_sites = field_validator("sites")(_sites)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(default=None, min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    role: Role | None = None
    sites: list[str] | None = None
    disabled: bool | None = None

    @field_validator("sites")
    @classmethod
    def _check_sites(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _sites(v)


class UserAdminOut(UserOut):
    disabled: bool
    created_at: datetime
    updated_at: datetime


class NewUserOut(UserAdminOut):
    password: str | None = Field(description="The generated password, shown once; null if you gave one")


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    username: str | None
    action: str
    site_id: str | None
    permission: str | None
    client_ip: str | None
    detail: str | None


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site_id: str
    gateway_id: str
    site_name: str | None = Field(default=None, max_length=200)
    device_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=5000,
        description="The gateway's device ids; the answer lists those another site already has",
    )

    @field_validator("site_id", "gateway_id")
    @classmethod
    def _segment(cls, v: str) -> str:
        return check_segment(v, "id")


class RegisterOut(BaseModel):
    site_id: str
    gateway_id: str
    broker_username: str
    broker_password: str = Field(description="Shown once; re-registering rotates it")
    command_public_key: str
    topic_prefix: str
    rotated: bool = Field(description="True if the gateway was registered before and its password changed")
    device_ids_taken: list[str] = Field(
        default_factory=list,
        description="Of the device_ids sent, those another site's devices already have: device ids are"
        " unique across sites, and the cloud keeps those devices with their site. Rename them here.",
    )


def _auth(services: Any) -> AuthService:
    service: AuthService = services.extras["auth"]
    return service


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/auth/login", response_model=LoginOut, responses={**_E401, 429: {"model": ErrorOut}})
async def login(body: LoginIn, request: Request) -> LoginOut:
    """Exchange a username and password for a short-lived bearer token."""
    service = auth_service(request.app)
    token, user = await service.login(body.username, body.password, _ip(request))
    return LoginOut(
        access_token=token,
        expires_in=int(service.settings.access_token_ttl_s),
        user=UserOut.model_validate(user),
    )


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, responses=_E401)
async def logout(user: CurrentUser, services: ServicesDep) -> None:
    """Revoke the token this request came with."""
    await _auth(services).revoke_current(user)


@router.get("/auth/me", response_model=MeOut, responses=_E401)
async def me(user: CurrentUser) -> MeOut:
    return MeOut(
        username=user.username,
        role=user.role,
        sites=sorted(user.sites),
        all_sites=user.all_sites,
        permissions=sorted(ROLE_PERMISSIONS[user.role]),
        via=user.via,
    )


@router.get("/auth/command-key", response_model=CommandKeyOut, responses=_E401)
async def command_key(_: CurrentUser, services: ServicesDep) -> CommandKeyOut:
    """The public half of the key the cloud signs commands with, for gateways' site files."""
    key = _auth(services).command_public_key
    assert key is not None, "auth feature not set up"
    return CommandKeyOut(public_key=key)


def _token_out(row: Any, username: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "username": username,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
    }


@router.post("/auth/tokens", status_code=201, response_model=NewTokenOut, responses=_E401)
async def create_token(body: TokenIn, user: CurrentUser, services: ServicesDep) -> NewTokenOut:
    """An API token for automation, acting as the caller (same role and sites). Shown once."""
    token, row = await _auth(services).create_api_token(user, body.name, body.expires_in_days)
    return NewTokenOut(token=token, **_token_out(row, user.username))


@router.get("/auth/tokens", response_model=list[TokenOut], responses=_E403)
async def list_tokens(
    user: CurrentUser,
    services: ServicesDep,
    all: Annotated[bool, Query(description="Admins: every user's tokens")] = False,
) -> list[TokenOut]:
    if all:
        require(user, Permission.MANAGE_USERS)
    rows = await _auth(services).list_api_tokens(user, everyone=all)
    return [TokenOut(**_token_out(t, u)) for t, u in rows]


@router.delete("/auth/tokens/{token_id}", status_code=204, responses={**_E401, 404: {"model": ErrorOut}})
async def revoke_token(token_id: str, user: CurrentUser, services: ServicesDep) -> None:
    """Revoke one of your API tokens (admins: anyone's). Takes effect on the next request."""
    await _auth(services).revoke_api_token(user, token_id, any_user=user.has(Permission.MANAGE_USERS))


def _user_out(row: UserRow, cls: type[UserAdminOut] = UserAdminOut, **extra: Any) -> Any:
    return cls(
        username=row.username,
        role=Role(row.role),
        sites=row.sites,
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        **extra,
    )


@router.get("/auth/users", response_model=list[UserAdminOut], responses=_E403)
async def list_users(user: CurrentUser, services: ServicesDep) -> list[UserAdminOut]:
    require(user, Permission.MANAGE_USERS)
    return [_user_out(r) for r in await _auth(services).list_users()]


@router.post("/auth/users", status_code=201, response_model=NewUserOut, responses=_E409)
async def create_user(body: UserIn, user: CurrentUser, services: ServicesDep) -> NewUserOut:
    require(user, Permission.MANAGE_USERS)
    password = body.password or generate_password()
    row = await _auth(services).create_user(user, body.username, password, body.role, body.sites)
    return _user_out(row, NewUserOut, password=None if body.password else password)  # type: ignore[no-any-return]


@router.patch(
    "/auth/users/{username}", response_model=UserAdminOut, responses={**_E409, 404: {"model": ErrorOut}}
)
async def update_user(
    username: str, body: UserPatch, user: CurrentUser, services: ServicesDep
) -> UserAdminOut:
    require(user, Permission.MANAGE_USERS)
    return _user_out(await _auth(services).update_user(user, username, body.model_dump()))  # type: ignore[no-any-return]


@router.get("/auth/audit", response_model=list[AuditOut], responses=_E403)
async def audit_log(
    user: CurrentUser,
    services: ServicesDep,
    username: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditOut]:
    """Newest first: logins, refusals, token and account changes, gateway registrations."""
    require(user, Permission.MANAGE_USERS)
    rows = await _auth(services).audit_log(limit=limit, username=username)
    return [AuditOut.model_validate(r) for r in rows]


@router.post("/gateways/register", status_code=201, response_model=RegisterOut, responses=_E409)
async def register_gateway(
    body: RegisterIn, request: Request, user: CurrentUser, services: ServicesDep
) -> RegisterOut:
    """Register a gateway at a site (installer or admin of that site): creates it and returns its
    broker credentials, once. Registering it again rotates the password (the old one stops working
    once the broker reloads its files)."""
    registrar: Registrar = services.extras["auth.registrar"]
    reg = await registrar.register(user, body.site_id, body.gateway_id, body.site_name)
    service = _auth(services)
    await service.audit(
        "gateway_registered",
        username=user.username,
        site_id=reg.site_id,
        permission=str(Permission.REGISTER_GATEWAY),
        client_ip=_ip(request),
        detail=f"{reg.gateway_id} ({'password rotated' if reg.rotated else 'new'})",
    )
    assert service.command_public_key is not None
    # Only which ids: not whose, nor anything else of another site's devices.
    async with make_read_sessions(services.sessions)() as session:
        taken = list(await foreign_devices(session, reg.site_id, body.device_ids))
    return RegisterOut(
        site_id=reg.site_id,
        gateway_id=reg.gateway_id,
        broker_username=reg.broker_username,
        broker_password=reg.broker_password,
        command_public_key=service.command_public_key,
        topic_prefix=services.settings.topic_prefix,
        rotated=reg.rotated,
        device_ids_taken=taken,
    )
