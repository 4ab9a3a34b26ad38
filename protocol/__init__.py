"""The wire contract between a Steward gateway and the cloud.

Both ``edge`` and ``cloud`` import this package and nothing else of each other. It holds
pydantic models for every MQTT message and the topic layout; it does no I/O.
"""

from protocol.ids import new_id
from protocol.models import (
    PROTOCOL_VERSION,
    BatchAck,
    Command,
    CommandResult,
    CommandStatus,
    DeviceInfo,
    Event,
    EventBatch,
    GatewayStatus,
    Location,
    Severity,
    WireModel,
    event_severity,
)
from protocol.topics import Topics

__all__ = [
    "PROTOCOL_VERSION",
    "BatchAck",
    "Command",
    "CommandResult",
    "CommandStatus",
    "DeviceInfo",
    "Event",
    "EventBatch",
    "GatewayStatus",
    "Location",
    "Severity",
    "Topics",
    "WireModel",
    "event_severity",
    "new_id",
]
