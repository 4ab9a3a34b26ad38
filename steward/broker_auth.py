"""Who may connect to the MQTT broker and which topics each account may touch.

One :class:`BrokerAccounts` model drives both brokers: the embedded amqtt broker enforces it through
:class:`AccountsAuthPlugin` and :class:`AccountsTopicPlugin` (below), and :mod:`steward.mosquitto`
renders it as Mosquitto's password and ACL files. The rules, with ``p`` the topic prefix::

    gateway gw of site s   publish    p/v1/s/gw/up/#
                           subscribe  p/v1/s/gw/down/#     (and receive only from there)
    cloud                  publish    p/v1/+/+/down/#
                           subscribe  p/v1/+/+/up/#        (also as $share/<group>/...)
                           both       p/cloud/fanout       (the live stream between cloud instances)
    anyone else            nothing: no anonymous connections

Client ids are bound to accounts too (:meth:`BrokerAccounts.client_id_allowed`), so one account cannot
connect under another's client id and kick it off (MQTT lets the newest connection with an id win)::

    gateway gw of site s   gw@s (its username), steward-gw-gw and steward-dev-gw (what the edge
                           uses; only while no other site has a gateway gw, else the username only)
    cloud                  any id not reserved for gateways (no '@', not steward-gw-* / steward-dev-*),
                           so several cloud instances can share the account with ids of their own

Why amqtt's own plugins are not used: in amqtt 0.12 ``TopicAccessControlListPlugin`` takes a fixed
``{username: [filters]}`` map and, configured as a dict, only ``acl`` (subscribe) and
``publish_acl`` -- no receive ACL and no per-user patterns -- and its ``FileAuthPlugin`` reads
only argon2/sha512-crypt hashes, not the PBKDF2 ``$7$`` hashes Mosquitto uses. One hash format for
both brokers means one password file to provision.

Passwords are hashed as Mosquitto 2 does (``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``).
They are generated, 192 random bits each, so key stretching adds nothing to their strength; the
iteration count is kept low on purpose because the broker hashes on every CONNECT, before it knows
whether the client is legitimate, and Mosquitto does that on its single network thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from protocol.topics import PROTOCOL_SEGMENT, check_segment, cloud_fanout_topic

__all__ = [
    "DEFAULT_CLOUD_USERNAME",
    "GATEWAY_CLIENT_ID_PREFIXES",
    "Access",
    "AccountsAuthPlugin",
    "AccountsTopicPlugin",
    "BrokerAccounts",
    "BrokerUser",
    "Grants",
    "Provisioned",
    "Role",
    "amqtt_plugins",
    "check_password",
    "filter_covers",
    "gateway_username",
    "hash_password",
    "new_password",
    "provision",
    "topic_matches",
]

DEFAULT_CLOUD_USERNAME = "steward-cloud"
# The client ids the edge gives its uplink and its on-broker device client (edge/gateway.py).
GATEWAY_CLIENT_ID_PREFIXES = ("steward-gw-", "steward-dev-")
DEFAULT_ITERATIONS = 1000
_SALT_BYTES = 12  # what mosquitto_passwd uses
_HASH = re.compile(r"^\$7\$(?P<it>[1-9][0-9]{0,8})\$(?P<salt>[A-Za-z0-9+/=]+)\$(?P<hash>[A-Za-z0-9+/=]+)$")

Ident = Annotated[str, AfterValidator(lambda v: check_segment(v, "id"))]


# ---- passwords ----------------------------------------------------------------------------------
def new_password() -> str:
    """A fresh broker password: 192 random bits, URL-safe, no ':' (the password file separator)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto 2's ``$7$`` PBKDF2-SHA512 hash (what ``mosquitto_passwd`` writes)."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


_DUMMY_HASH = hash_password(new_password())


def check_password(password: str, password_hash: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash; False for anything else, never an exception."""
    m = _HASH.match(password_hash)
    if m is None:
        return False
    try:
        salt = base64.b64decode(m["salt"], validate=True)
        expected = base64.b64decode(m["hash"], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(m["it"]))
    return hmac.compare_digest(digest, expected)


# ---- topic matching -----------------------------------------------------------------------------
def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a concrete topic against a filter with ``+`` and ``#``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def filter_covers(grant: str, requested: str) -> bool:
    """True if every topic ``requested`` (a filter, maybe with wildcards) can match is inside ``grant``.

    ``p/v1/s/gw/down/#`` covers ``p/v1/s/gw/down/commands`` and itself, but not ``p/v1/+/gw/down/#``.
    """
    g, r = grant.split("/"), requested.split("/")
    for i, level in enumerate(g):
        if level == "#":
            return True
        if i >= len(r) or r[i] == "#":
            return False
        if level != "+" and r[i] != level:
            return False
    return len(g) == len(r)


def _strip_share(topic_filter: str) -> str | None:
    """``$share/<group>/<filter>`` -> ``<filter>``; other ``$`` filters (``$SYS``) -> None."""
    if not topic_filter.startswith("$"):
        return topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) == 3 and parts[0] == "$share" and parts[1] and not set("+#") & set(parts[1]):
        return parts[2]
    return None


# ---- accounts -----------------------------------------------------------------------------------
class Role(StrEnum):
    GATEWAY = "gateway"
    CLOUD = "cloud"


class Access(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class Grants:
    """The topic filters one account may publish to and subscribe to (receive follows subscribe)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def gateway_username(site_id: str, gateway_id: str) -> str:
    """``gw-1@oak-garden``: '@' cannot occur in an id, so the name is unambiguous and unique."""
    return f"{check_segment(gateway_id, 'gateway id')}@{check_segment(site_id, 'site id')}"


class BrokerUser(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,128}$")
    password_hash: str = Field(pattern=_HASH.pattern, description="Mosquitto $7$ PBKDF2-SHA512 hash")
    role: Role
    site_id: Ident | None = None
    gateway_id: Ident | None = None

    @model_validator(mode="after")
    def _scope(self) -> BrokerUser:
        if self.role is Role.GATEWAY:
            if self.site_id is None or self.gateway_id is None:
                raise ValueError(f"gateway account {self.username!r} needs site_id and gateway_id")
        elif self.site_id is not None or self.gateway_id is not None:
            raise ValueError(f"cloud account {self.username!r} takes no site_id or gateway_id")
        return self


class BrokerAccounts(BaseModel):
    """Every account the broker knows (hashes only, never passwords) and the topic prefix they use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic_prefix: str = Field(default="steward", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    users: list[BrokerUser] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> BrokerAccounts:
        seen: set[str] = set()
        gateways: set[tuple[str | None, str | None]] = set()
        for u in self.users:
            if u.username in seen:
                raise ValueError(f"duplicate broker username {u.username!r}")
            seen.add(u.username)
            if u.role is Role.GATEWAY:
                key = (u.site_id, u.gateway_id)
                if key in gateways:
                    raise ValueError(f"two accounts for gateway {u.gateway_id!r} of site {u.site_id!r}")
                gateways.add(key)
        return self

    # -- lookups --
    def get(self, username: str | None) -> BrokerUser | None:
        for u in self.users:
            if u.username == username:
                return u
        return None

    def authenticate(self, username: str | None, password: str | None) -> BrokerUser | None:
        """The account if the password matches; None otherwise (taking about as long either way)."""
        user = self.get(username)
        if user is None or password is None:
            check_password(password or "", _DUMMY_HASH)
            return None
        return user if check_password(password, user.password_hash) else None

    def grants(self, user: BrokerUser) -> Grants:
        base = f"{self.topic_prefix}/{PROTOCOL_SEGMENT}"
        if user.role is Role.GATEWAY:
            mine = f"{base}/{user.site_id}/{user.gateway_id}"
            return Grants(publish=(f"{mine}/up/#",), subscribe=(f"{mine}/down/#",))
        # The fan-out topic is the cloud's alone: a message there reaches operators' consoles.
        fanout = cloud_fanout_topic(self.topic_prefix)
        return Grants(publish=(f"{base}/+/+/down/#", fanout), subscribe=(f"{base}/+/+/up/#", fanout))

    def client_ids(self, user: BrokerUser) -> frozenset[str] | None:
        """The client ids a gateway account may connect with; None for the cloud (see
        :meth:`client_id_allowed`). ``steward-gw-<gw>`` names no site, so it is left out when another
        site has a gateway with the same id: either could otherwise take the other's connection."""
        if user.role is not Role.GATEWAY:
            return None
        ids = {user.username}
        same_id = [u for u in self.users if u.role is Role.GATEWAY and u.gateway_id == user.gateway_id]
        if len(same_id) == 1:
            ids |= {f"{prefix}{user.gateway_id}" for prefix in GATEWAY_CLIENT_ID_PREFIXES}
        return frozenset(ids)

    def client_id_allowed(self, username: str | None, client_id: str | None) -> bool:
        """May ``username`` connect as ``client_id``? A gateway: only with its own ids; the cloud: with
        any id except those reserved for gateways. Unknown users: no."""
        user = self.get(username)
        if user is None:
            return False
        client_id = client_id or ""
        allowed = self.client_ids(user)
        if allowed is not None:
            return client_id in allowed
        return "@" not in client_id and not client_id.startswith(GATEWAY_CLIENT_ID_PREFIXES)

    def allows(self, username: str | None, access: Access, topic: str) -> bool:
        """May ``username`` publish to / subscribe to / receive from ``topic``? Unknown users: no."""
        user = self.get(username)
        if user is None or not topic:
            return False
        grants = self.grants(user)
        if access is Access.SUBSCRIBE:
            wanted = _strip_share(topic)
            return wanted is not None and any(filter_covers(g, wanted) for g in grants.subscribe)
        if "+" in topic or "#" in topic or topic.startswith("$"):
            return False
        allowed = grants.publish if access is Access.PUBLISH else grants.subscribe
        return any(topic_matches(g, topic) for g in allowed)

    # -- files --
    def save(self, path: str | Path) -> Path:
        """Write as JSON, owner-readable only: hashes are not passwords but still worth guarding."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> BrokerAccounts:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Provisioned:
    accounts: BrokerAccounts
    passwords: dict[str, str] = field(default_factory=dict)
    """Plain passwords of accounts created (or rotated) by this call; show once, store nowhere."""
    removed: tuple[str, ...] = ()


def provision(
    gateways: Iterable[tuple[str, str]],
    *,
    cloud_username: str = DEFAULT_CLOUD_USERNAME,
    topic_prefix: str = "steward",
    existing: BrokerAccounts | None = None,
    rotate: Iterable[str] = (),
    iterations: int = DEFAULT_ITERATIONS,
) -> Provisioned:
    """Accounts for the cloud and each ``(site_id, gateway_id)``; the list is the whole truth.

    Accounts already in ``existing`` keep their hashes (their passwords stay valid) unless named in
    ``rotate``; gateways missing from ``gateways`` lose their account (``removed``).
    """
    rotate = set(rotate)
    old = {u.username: u for u in existing.users} if existing else {}
    users: list[BrokerUser] = []
    passwords: dict[str, str] = {}

    def account(username: str, role: Role, site_id: str | None, gateway_id: str | None) -> None:
        prior = old.get(username)
        if prior is not None and prior.role is role and username not in rotate:
            users.append(prior)
            return
        password = passwords[username] = new_password()
        users.append(
            BrokerUser(
                username=username,
                password_hash=hash_password(password, iterations=iterations),
                role=role,
                site_id=site_id,
                gateway_id=gateway_id,
            )
        )

    account(cloud_username, Role.CLOUD, None, None)
    for site_id, gateway_id in gateways:
        account(gateway_username(site_id, gateway_id), Role.GATEWAY, site_id, gateway_id)
    accounts = BrokerAccounts(topic_prefix=topic_prefix, users=users)
    kept = {u.username for u in users}
    return Provisioned(accounts, passwords, tuple(sorted(set(old) - kept)))


# ---- amqtt plugins ------------------------------------------------------------------------------
def _accounts_from(config: Any) -> BrokerAccounts:
    data = getattr(config, "accounts", None)
    if not data:
        raise ValueError("broker plugin needs an 'accounts' setting (BrokerAccounts as a dict)")
    return BrokerAccounts.model_validate(data)


class AccountsAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt authentication against :class:`BrokerAccounts`: anonymous and unknown users, wrong
    passwords and client ids the account may not use are refused.

    amqtt 0.12 itself consults this only after it has dropped (clean session) or taken over
    (persistent session) an existing session with the same client id; :class:`steward.broker.EmbeddedBroker`
    runs it before that, so a refused CONNECT leaves the other client's session alone."""

    @dataclass
    class Config:
        accounts: dict[str, Any] = field(default_factory=dict)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.accounts = _accounts_from(self.context.config)

    async def authenticate(self, *, session: Session) -> bool | None:
        username = session.username
        password = session.password
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if not username:
            self.context.logger.info(f"refused anonymous client {session.client_id!r}")
            return False
        # PBKDF2 takes a while by design; keep it off the broker's event loop.
        user = await asyncio.to_thread(self.accounts.authenticate, username, password)
        if user is None:
            self.context.logger.info(
                f"refused client {session.client_id!r}: bad credentials for {username!r}"
            )
            return False
        if not self.accounts.client_id_allowed(user.username, session.client_id):
            self.context.logger.warning(
                f"refused {username!r}: may not use client id {session.client_id!r} "
                f"(gateways connect as their username or steward-gw-<gateway id>)"
            )
            return False
        return True


class AccountsTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt publish/subscribe/receive checks against :class:`BrokerAccounts`.

    amqtt 0.12 answers a refused SUBSCRIBE with return code 0x80, silently drops a refused PUBLISH
    (a QoS 1 publisher still gets its PUBACK and stays connected), and skips a subscriber not allowed
    to receive a message. Receive is checked too because amqtt lets a client that reconnects with
    another client's id and ``clean_session=False`` inherit that session's subscriptions.
    """

    @dataclass
    class Config:
        accounts: dict[str, Any] = field(default_factory=dict)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.accounts = _accounts_from(self.context.config)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None or action is None:
            return False
        allowed = self.accounts.allows(session.username, Access(action.value), topic)
        if not allowed:
            self.context.logger.info(f"{session.username!r} may not {action.value} {topic!r}")
        return allowed


def amqtt_plugins(accounts: BrokerAccounts) -> dict[str, Any]:
    """The ``plugins`` section of an amqtt broker config that enforces ``accounts``."""
    data = accounts.model_dump(mode="json")
    return {
        f"{__name__}.AccountsAuthPlugin": {"accounts": data},
        f"{__name__}.AccountsTopicPlugin": {"accounts": data},
    }
