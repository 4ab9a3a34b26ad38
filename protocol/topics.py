"""MQTT topic layout: one subtree per site and gateway, uplink and downlink kept apart.

``{prefix}/v1/{site}/{gateway}/up/events``    event batches (gateway -> cloud, QoS 1)
``{prefix}/v1/{site}/{gateway}/up/results``   command results (gateway -> cloud, QoS 1)
``{prefix}/v1/{site}/{gateway}/up/status``    gateway status, retained, also the Last Will
``{prefix}/v1/{site}/{gateway}/down/acks``    batch acknowledgements (cloud -> gateway, QoS 1)
``{prefix}/v1/{site}/{gateway}/down/commands`` commands (cloud -> gateway, QoS 1, never retained)
``{prefix}/v1/{site}/{gateway}/down/credentials`` access credential deltas (cloud -> gateway, QoS 1)
``{prefix}/v1/{site}/{gateway}/up/sync``      the gateway's credential list version (gateway -> cloud)

``{prefix}/cloud/fanout``                     the live stream between cloud instances (cloud only, QoS 0)

Keeping "up" and "down" as separate subtrees lets a broker ACL say in two lines what a gateway
may publish and what it may read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOL_SEGMENT = "v1"
# Also how a consumer recognises command results on a wildcard subscription (the cloud reads them apart).
RESULTS_SUFFIX = "/up/results"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_segment(value: str, what: str) -> str:
    """Reject ids that would break the topic tree (wildcards, separators, empty)."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.' or '-'")
    return value


def cloud_fanout_topic(prefix: str) -> str:
    """Outside ``{prefix}/v1/...``, where gateways' accounts publish: the cloud's account's alone."""
    return f"{prefix}/cloud/fanout"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one gateway, or wildcard filters for the cloud."""

    prefix: str
    site_id: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{PROTOCOL_SEGMENT}/{self.site_id}/{self.gateway_id}"

    @property
    def events(self) -> str:
        return f"{self.base}/up/events"

    @property
    def results(self) -> str:
        return self.base + RESULTS_SUFFIX

    @property
    def status(self) -> str:
        return f"{self.base}/up/status"

    @property
    def acks(self) -> str:
        return f"{self.base}/down/acks"

    @property
    def commands(self) -> str:
        return f"{self.base}/down/commands"

    @property
    def credentials(self) -> str:
        return f"{self.base}/down/credentials"

    @property
    def sync(self) -> str:
        return f"{self.base}/up/sync"

    @classmethod
    def cloud_uplink_filter(cls, prefix: str) -> str:
        """What the cloud subscribes to: every gateway's uplink."""
        return f"{prefix}/{PROTOCOL_SEGMENT}/+/+/up/+"

    @classmethod
    def parse(cls, prefix: str, topic: str) -> tuple[Topics, str, str]:
        """Split a topic into (gateway topics, direction, kind); ValueError if it is not ours."""
        parts = topic.split("/")
        head = prefix.split("/")
        if len(parts) != len(head) + 5 or parts[: len(head)] != head:
            raise ValueError(f"topic {topic!r} is not under {prefix!r}")
        version, site, gateway, direction, kind = parts[len(head) :]
        if version != PROTOCOL_SEGMENT or direction not in ("up", "down"):
            raise ValueError(f"topic {topic!r} is not a Steward {PROTOCOL_SEGMENT} topic")
        return cls(prefix, site, gateway), direction, kind
