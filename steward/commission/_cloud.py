"""Talking to the cloud from the installer's laptop: register the gateway, upload the report.

The installer's token goes to the cloud and nowhere else: never into a file or the log, never to a
non-loopback host over plain HTTP, never along a redirect (httpx follows none unless told). What the
cloud sends back is checked (pydantic) before anything is written, and the gateway's credentials are
written to a file only its owner can read (0600), atomically, so a crash leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.topics import check_segment

__all__ = [
    "CloudClient",
    "CloudFailure",
    "GatewayCredentials",
    "RegisterReply",
    "check_cloud_url",
    "credentials_path",
    "write_private",
]

API = "/api/v1"


class CloudFailure(Exception):
    """Something the installer must act on; ``str()`` says what, ``exit_code`` is 1 (the cloud or the
    network failed) or 2 (bad input: the token, the ids, the report)."""

    def __init__(self, message: str, exit_code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status  # the cloud's HTTP status, None if it did not answer


def credentials_path(config: Path) -> Path:
    """``site.yaml`` -> ``site.yaml.credentials.json``, next to the config and its commissioning log."""
    return config.with_name(config.name + ".credentials.json")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cloud_url(url: str) -> str:
    """The cloud's base URL without a trailing slash; ValueError says what is wrong with it."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{url!r} is not a cloud address; give it as https://cloud.example.com")
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        # The token is a bearer credential: over plain HTTP anyone on the estate's network could reuse it.
        raise ValueError(f"{url!r}: plain http is only for a cloud on this machine; use https://")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ValueError(f"{url!r}: give only the scheme, host, port and path of the cloud")
    return url.strip().rstrip("/")


class RegisterReply(BaseModel):
    """``POST /api/v1/gateways/register``'s answer, as far as the gateway needs it."""

    model_config = ConfigDict(extra="ignore")
    site_id: str
    gateway_id: str
    broker_username: str = Field(min_length=1, max_length=200)
    broker_password: str = Field(min_length=8, max_length=1024)
    command_public_key: str = Field(min_length=1, max_length=200)
    topic_prefix: str = Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    rotated: bool
    # The config's device ids another site already has (a cloud before this field sends none).
    device_ids_taken: list[str] = Field(default_factory=list, exclude=True)

    @field_validator("command_public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        from protocol.signing import KeyFormatError, load_public_key

        try:
            load_public_key(value)
        except KeyFormatError as exc:
            raise ValueError(f"not an Ed25519 public key: {exc}") from None
        return value


class GatewayCredentials(RegisterReply):
    """The credentials file: what the cloud issued, where and when (never the installer's token)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    cloud: str
    registered_at: str
    registered_by: str | None = None

    @classmethod
    def load(cls, path: Path) -> GatewayCredentials:
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError) as exc:
            raise CloudFailure(f"{path}: not a readable credentials file ({exc})", 2) from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case a umask or ACL widened it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _error_message(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        error = response.json()["error"]
        return f"{error['message']} ({error['code']})"
    return response.text[:300] or response.reason_phrase


class CloudClient:
    """A short-lived HTTP client for one command; every request has a timeout."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 20.0) -> None:
        self.base_url = check_cloud_url(base_url)
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("the token is empty or has spaces in it; paste it again")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "steward-commission"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            follow_redirects=False,
        )

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, API + path, **kwargs)
        except httpx.TimeoutException:
            raise CloudFailure(
                f"{what}: the cloud at {self.base_url} did not answer in time; check the network and retry",
                1,
            ) from None
        except httpx.TransportError as exc:
            raise CloudFailure(
                f"{what}: cannot reach the cloud at {self.base_url} ({exc or type(exc).__name__}); "
                "check the address and the laptop's network, then retry",
                1,
            ) from None
        status = response.status_code
        if status < 300:
            return response
        detail = _error_message(response)
        if status == 401:
            raise CloudFailure(
                f"{what}: the cloud refused the token: {detail}. It is wrong, expired or revoked; "
                "log in again or ask the operations centre for a new one",
                2,
                status,
            )
        if status == 403:
            raise CloudFailure(f"{what}: not allowed: {detail}", 2, status)
        if 300 <= status < 400:
            raise CloudFailure(
                f"{what}: the cloud answered with a redirect to {response.headers.get('location')!r}; "
                "give that address with --cloud (the token is not sent along redirects)",
                2,
            )
        if status >= 500:
            raise CloudFailure(f"{what}: the cloud failed ({status}): {detail}; retry later", 1, status)
        raise CloudFailure(f"{what}: refused ({status}): {detail}", 2, status)

    def gateway(self, site_id: str, gateway_id: str) -> dict[str, Any] | None:
        """The cloud's record of the gateway, or None if it has none (or the caller may not see it)."""
        what = "looking up the gateway"
        params = {"site_id": site_id}
        while True:
            try:
                response = self._request("GET", "/gateways", what, params=params)
            except CloudFailure as exc:
                if exc.status == 403:
                    return None  # registering is refused too, and says why in its own words
                raise
            try:
                body = response.json()
                # A page since 2026-11-24; a plain list from a cloud before it.
                page = body if isinstance(body, dict) else {"items": body, "next_cursor": None}
                items, cursor = page["items"], page["next_cursor"]
                for g in items:
                    if g["id"] == gateway_id:
                        return dict(g)
            except (ValueError, TypeError, KeyError):
                raise CloudFailure(f"{what}: the cloud's answer is not a list of gateways", 1) from None
            if not cursor:
                return None
            params = {"site_id": site_id, "cursor": cursor}

    def register(
        self, site_id: str, gateway_id: str, site_name: str | None, device_ids: list[str] | None = None
    ) -> RegisterReply:
        body: dict[str, Any] = {
            "site_id": check_segment(site_id, "site id"),
            "gateway_id": check_segment(gateway_id, "id"),
        }
        if site_name:
            body["site_name"] = site_name[:200]
        if device_ids:
            body["device_ids"] = device_ids
        what = f"registering {gateway_id} at {site_id}"
        response = self._request("POST", "/gateways/register", what, json=body)
        try:
            reply = RegisterReply.model_validate_json(response.content)
        except ValidationError as exc:
            raise CloudFailure(f"{what}: the cloud's answer is not a registration ({exc})", 1) from None
        if (reply.site_id, reply.gateway_id) != (site_id, gateway_id):
            raise CloudFailure(
                f"{what}: the cloud registered {reply.gateway_id!r} at {reply.site_id!r} instead", 1
            )
        return reply

    def upload_report(self, gateway_id: str, report: dict[str, Any]) -> dict[str, Any]:
        what = f"uploading the report of {gateway_id}"
        body = json.dumps(report, ensure_ascii=False).encode("utf-8")
        response = self._request(
            "POST",
            f"/gateways/{check_segment(gateway_id, 'id')}/commissioning",
            what,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            data = response.json()
        except ValueError:
            raise CloudFailure(f"{what}: the cloud's answer is not JSON", 1) from None
        if not isinstance(data, dict):
            raise CloudFailure(f"{what}: unexpected answer from the cloud", 1)
        return data
