"""Site configuration: one YAML file per estate, validated whole at start-up.

A bad file raises :class:`ConfigError` whose message names the file, the path inside it
(``devices[3].transport.unit``) and what is wrong, so an installer never reads a traceback.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.models import MAX_EVENT_BYTES, MAX_MESSAGE_BYTES, Location, TimeZoneName
from protocol.topics import check_segment

Ident = Annotated[str, AfterValidator(lambda v: check_segment(v, "id"))]
DeviceKind = Literal[
    "barrier_gate", "door_access", "smart_meter", "fire_panel", "video_intercom", "ble_sensor"
]


class ConfigError(Exception):
    """A site configuration that cannot be used; ``str()`` is the message for the installer."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    ca_file: Path | None = Field(default=None, description="CA that signed the broker's certificate")
    cert_file: Path | None = Field(default=None, description="Client certificate, if the broker wants one")
    key_file: Path | None = None
    verify: bool = Field(default=True, description="Verify the broker's certificate and host name")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class UplinkConfig(_Strict):
    broker_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt:// or mqtts://")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = Field(default="steward", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=600)
    command_public_key: str | None = Field(
        default=None, description="The cloud's Ed25519 public key (base64) that signs commands"
    )

    @field_validator("broker_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = urlparse(value)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ValueError("broker_url must look like mqtt://host:1883 or mqtts://host:8883")
        return value

    @field_validator("command_public_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value:
            from protocol.signing import KeyFormatError, load_public_key

            try:
                load_public_key(value)
            except KeyFormatError as exc:
                raise ValueError(f"not an Ed25519 public key: {exc}") from None
        return value

    @property
    def host(self) -> str:
        return urlparse(self.broker_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        url = urlparse(self.broker_url)
        return url.port or (8883 if url.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        return urlparse(self.broker_url).scheme == "mqtts" or self.tls is not None


class BufferConfig(_Strict):
    path: Path = Path("var/edge-buffer.db")
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024)
    max_age_days: float = Field(default=30, gt=0)
    batch_size: int = Field(default=500, ge=1, le=5000)
    linger_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="How long live events wait to leave together as one batch; a backlog never waits",
    )
    max_batch_bytes: int = Field(
        default=256 * 1024,
        ge=2 * MAX_EVENT_BYTES,
        le=MAX_MESSAGE_BYTES,
        description="Upper bound of one uplink batch's JSON, below the cloud's max_payload_bytes (default"
        " 1 MiB): the cloud refuses a larger message, and a batch it refuses is never acknowledged",
    )
    resend_timeout_s: float = Field(default=10, gt=0)
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="NORMAL survives a killed process; FULL also survives power loss (slower)",
    )


class ModbusTcpTransport(_Strict):
    type: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=247)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=2, ge=0, le=10)

    @property
    def bus(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class ModbusRtuTransport(_Strict):
    type: Literal["modbus_rtu"]
    port: str = Field(description="Serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(default=1, ge=1, le=247)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=2, ge=0, le=10)

    @property
    def bus(self) -> str:
        return f"rtu://{self.port}"


class MqttTransport(_Strict):
    type: Literal["mqtt"]
    topic_base: str = Field(pattern=r"^[^#+]+$", description="Device topics live under this")

    @property
    def bus(self) -> str:
        return "mqtt"


class BleTransport(_Strict):
    type: Literal["ble"]
    address: str = Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    bindkey: SecretStr | None = None

    @property
    def bus(self) -> str:
        return "ble"


Transport = Annotated[
    ModbusTcpTransport | ModbusRtuTransport | MqttTransport | BleTransport, Field(discriminator="type")
]

OptionValue = str | int | float | bool | list[Any] | dict[str, Any]


class DeviceConfig(_Strict):
    id: Ident
    kind: DeviceKind
    model: str = Field(default="generic", min_length=1, max_length=64)
    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="What people call it; consoles show it"
    )
    transport: Transport
    poll_interval_s: float = Field(default=1.0, ge=0.05, le=3600)
    location: Location = Field(default_factory=Location)
    options: dict[str, OptionValue] = Field(
        default_factory=dict, description="Kind-specific settings; the driver validates them"
    )

    @property
    def address_key(self) -> tuple[str, str]:
        """What must be unique on a bus: (bus, address)."""
        t = self.transport
        if isinstance(t, ModbusTcpTransport | ModbusRtuTransport):
            return t.bus, f"unit {t.unit}"
        if isinstance(t, MqttTransport):
            return t.bus, f"topic {t.topic_base}"
        return t.bus, f"address {t.address.upper()}"


class FireLinkageRule(_Strict):
    """When ``panel`` reports a fire alarm in one of ``zones``, release ``doors`` and raise ``gates``."""

    panel: Ident = Field(description="Fire panel device id")
    zones: list[int] | Literal["any"] = Field(default="any", description="Zone numbers, or any zone")
    doors: list[Ident] = Field(default_factory=list, description="door_access devices to hold unlocked")
    gates: list[Ident] = Field(default_factory=list, description="barrier_gate devices to hold open")

    @model_validator(mode="after")
    def _check(self) -> FireLinkageRule:
        if not self.doors and not self.gates:
            raise ValueError("a fire linkage rule must name at least one door or gate")
        if self.zones != "any" and (not self.zones or any(z < 1 for z in self.zones)):
            raise ValueError('zones must be zone numbers from 1, or "any"')
        return self

    def covers(self, panel: str, zone: int) -> bool:
        return panel == self.panel and (self.zones == "any" or zone in self.zones)


class AccessSettings(_Strict):
    """How the gateway decides access on its own (edge/access.py)."""

    pin_salt: SecretStr | None = Field(
        default=None, description="Salt for PIN/visitor code digests, shared with the cloud; default site id"
    )
    unlock_s: float = Field(default=5.0, gt=0, le=300, description="How long a granted door stays released")
    action_timeout_s: float = Field(default=20.0, gt=0, le=120, description="Unlock/open must finish within")


def check_linkage_rules(rules: list[FireLinkageRule], kinds: dict[str, str]) -> list[str]:
    """Cross-check rules against the site's devices (id -> kind); for SiteConfig validation."""
    problems: list[str] = []
    for i, rule in enumerate(rules):
        where = f"fire_linkage[{i}]"
        if kinds.get(rule.panel) != "fire_panel":
            problems.append(f"{where}.panel: {rule.panel!r} is not a fire_panel device of this site")
        for key, ids, want in (("doors", rule.doors, "door_access"), ("gates", rule.gates, "barrier_gate")):
            problems.extend(
                f"{where}.{key}: {dev!r} is not a {want} device of this site"
                for dev in ids
                if kinds.get(dev) != want
            )
    return problems


class SiteConfig(_Strict):
    site_id: Ident
    site_name: str = Field(min_length=1)
    timezone: TimeZoneName = Field(
        default="Asia/Shanghai", description="The estate's time zone: the cloud's night rules and schedules"
    )
    gateway_id: Ident
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    device_broker_url: str | None = Field(
        default=None, description="On-site broker for MQTT devices; defaults to the uplink broker"
    )
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    devices: list[DeviceConfig] = Field(default_factory=list)
    fire_linkage: list[FireLinkageRule] = Field(
        default_factory=list, description="Which fire zones release which doors and raise which gates"
    )
    access: AccessSettings = Field(default_factory=AccessSettings)

    @model_validator(mode="after")
    def _unique(self) -> SiteConfig:
        ids = Counter(d.id for d in self.devices)
        dup = sorted(i for i, n in ids.items() if n > 1)
        if dup:
            raise ValueError(f"duplicate device id {', '.join(map(repr, dup))}")
        seen: dict[tuple[str, str], str] = {}
        for d in self.devices:
            key = d.address_key
            if key in seen:
                raise ValueError(
                    f"devices {seen[key]!r} and {d.id!r} share {key[1]} on bus {key[0]}; "
                    "each device needs its own address"
                )
            seen[key] = d.id
        problems = check_linkage_rules(self.fire_linkage, {d.id: d.kind for d in self.devices})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def device(self, device_id: str) -> DeviceConfig:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("modbus_tcp", "modbus_rtu", "mqtt", "ble", "function-after[_unique()]"):
            continue  # pydantic's union tag, not a key the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors(include_url=False):
        where = _loc(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a Steward setting; check the spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_site_config(data: Any, source: str = "<config>") -> SiteConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    from drivers.registry import validate_device_options  # drivers own their option schemas

    problems = validate_device_options(site)
    if problems:
        raise ConfigError("\n".join([f"{source}: {len(problems)} problem(s)", *(f"  {p}" for p in problems)]))
    return site


def load_site_config(path: str | Path) -> SiteConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_site_config(data, str(path))
