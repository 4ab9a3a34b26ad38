"""Cloud settings, validated whole at start-up. Environment variables use the prefix ``STEWARD_CLOUD_``.

Plain pydantic (no pydantic-settings dependency): :meth:`CloudSettings.from_env` reads
``STEWARD_CLOUD_<FIELD>`` for every field, e.g. ``STEWARD_CLOUD_DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from protocol.models import MAX_MESSAGE_BYTES

ENV_PREFIX = "STEWARD_CLOUD_"


class SettingsError(Exception):
    """Settings that cannot be used; ``str()`` names each bad variable."""


class CloudSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/cloud.db",
        description="sqlite+aiosqlite:///path or postgresql+asyncpg://user@host:port/db",
    )
    database_schema: str | None = Field(
        default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="PostgreSQL only: schema (search_path)"
    )
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, ge=1, le=65535)
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    topic_prefix: str = Field(default="steward", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    shared_subscription: bool = Field(
        default=False, description="Subscribe to events/results as $share/<group>/...; needs broker support"
    )
    share_group: str = Field(default="steward-cloud", pattern=r"^[A-Za-z0-9_-]+$")
    fanout: bool | None = Field(
        default=None,
        description="Carry the live stream (SSE, command long-polls) between cloud instances over the "
        "broker (topic {prefix}/cloud/fanout); default: on with shared_subscription",
    )
    client_id: str = Field(default="steward-cloud", min_length=1, max_length=64)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    command_expiry_s: float = Field(default=30, gt=0, le=3600)
    command_publish_timeout_s: float = Field(
        default=5, gt=0, le=60, description="How long a command's PUBACK may take before the POST answers 503"
    )
    gateway_offline_after_s: float = Field(default=180, gt=0)
    max_clock_skew_s: float = Field(
        default=120, gt=0, description="Flag a gateway whose clock is further off"
    )
    sweep_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_payload_bytes: int = Field(default=MAX_MESSAGE_BYTES, ge=1024)
    run_migrations: bool = Field(default=True, description="alembic upgrade head at start-up")
    # -- retention (cloud/retention.py); 0 keeps that kind for ever --
    retention_events_days: float = Field(
        default=365, ge=0, description="Delete events stored longer ago than this (0: keep for ever)"
    )
    retention_readings_days: float = Field(
        default=365, ge=0, description="Delete readings older than this (0: keep for ever)"
    )
    retention_rejected_days: float = Field(
        default=90, ge=0, description="Delete rejected events received longer ago (0: keep for ever)"
    )
    retention_interval_s: float = Field(default=3600, gt=0, description="How often retention runs")
    # -- accounts, tokens, command signing, gateway registration (cloud/auth) --
    command_signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) the cloud signs commands with; created 0600 on first start "
        "if missing. Default: command-signing.pem next to the SQLite database, else var/",
    )
    command_signing_key_password: SecretStr | None = Field(
        default=None, description="Passphrase of the signing key file, if it is encrypted"
    )
    broker_accounts_file: Path | None = Field(
        default=None,
        description="BrokerAccounts JSON (hashes only) that gateway registration maintains and "
        "`steward cloud broker-config` renders for Mosquitto. Default: broker-accounts.json next to "
        "the SQLite database, else var/",
    )
    access_token_ttl_s: float = Field(
        default=3600, gt=0, le=7 * 86400, description="Lifetime of a login (session) token"
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins per username within login_window_s before 429"
    )
    login_max_failures_per_ip: int = Field(
        default=20, ge=1, description="Failed logins per client IP within login_window_s before 429"
    )
    login_window_s: float = Field(default=300, gt=0, description="Window (and lock-out) for login_max_*")

    @model_validator(mode="after")
    def _check(self) -> CloudSettings:
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        if self.database_schema and not self.is_postgres:
            raise ValueError("database_schema applies to PostgreSQL only")
        if (self.broker_username is None) and (self.broker_password is not None):
            raise ValueError("broker_password given without broker_username")
        return self

    @property
    def fanout_enabled(self) -> bool:
        return self.shared_subscription if self.fanout is None else self.fanout

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def state_dir(self) -> Path:
        """Where the cloud keeps files beside its database: the SQLite file's directory, else ``var``."""
        if not self.is_postgres:
            path = self.database_url.split("///", 1)[-1]
            if path and path != ":memory:":
                return Path(path).parent
        return Path("var")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CloudSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: env[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in env
        }
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            lines = [f"{exc.error_count()} bad cloud setting(s)"]
            for err in exc.errors(include_url=False):
                field = ".".join(map(str, err["loc"])) or "(settings)"
                name = ENV_PREFIX + field.upper() if err["loc"] else field
                lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
            raise SettingsError("\n".join(lines)) from None
