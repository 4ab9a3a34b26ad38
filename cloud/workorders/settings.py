"""Work order settings. Each field is taken from :class:`cloud.settings.CloudSettings` when that has it
set, else from the ``STEWARD_CLOUD_<FIELD>`` environment variable, e.g. ``STEWARD_CLOUD_RULES_FILE``:
the feature keeps its settings to itself, and the core settings need not know them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from cloud.settings import ENV_PREFIX, SettingsError

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config"


class WorkOrderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules_file: Path = Field(default=SHIPPED_CONFIG / "rules.yaml", description="Work order rules (YAML)")
    maintenance_file: Path = Field(
        default=SHIPPED_CONFIG / "maintenance.yaml", description="Planned maintenance schedules (YAML)"
    )
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Escalations are POSTed here as JSON"
    )
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for the signature")
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles each time")
    webhook_backoff_max_s: float = Field(default=900.0, gt=0)
    workorder_tick_s: float = Field(default=1.0, gt=0, le=60, description="Timer loop interval")

    @model_validator(mode="after")
    def _check(self) -> WorkOrderSettings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("webhook_url needs webhook_secret (receivers verify the signature)")
        return self

    @classmethod
    def from_cloud(
        cls, cloud: Any = None, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> WorkOrderSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if cloud is not None and getattr(cloud, name, None) is not None:
                values[name] = getattr(cloud, name)
            elif ENV_PREFIX + name.upper() in env:
                values[name] = env[ENV_PREFIX + name.upper()]
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            lines = [f"{exc.error_count()} bad work order setting(s)"]
            for err in exc.errors(include_url=False):
                field = ".".join(map(str, err["loc"])) or "(settings)"
                name = ENV_PREFIX + field.upper() if err["loc"] else field
                lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
            raise SettingsError("\n".join(lines)) from None
