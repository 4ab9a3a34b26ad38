"""Counters the cloud keeps in memory and renders in Prometheus text format at ``/metrics``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocol import CommandStatus

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Issued to final: milliseconds for a door's relay, a gate's travel (15 s by default), up to its expiry.
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


@dataclass
class Histogram:
    """One Prometheus histogram series (cumulative buckets)."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(init=False)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        return [
            *(
                f'{name}_bucket{{{labels}{sep}le="{b}"}} {n}'
                for b, n in zip(self.bounds, self.buckets, strict=True)
            ),
            f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}',
            f"{name}_sum{{{labels}}} {self.total:.6f}" if labels else f"{name}_sum {self.total:.6f}",
            f"{name}_count{{{labels}}} {self.count}" if labels else f"{name}_count {self.count}",
        ]


@dataclass
class Metrics:
    batches: int = 0
    events_stored: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0  # kept in rejected_events: invalid, from a batch otherwise stored
    results: int = 0
    statuses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    store_errors: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    ack: Histogram = field(default_factory=lambda: Histogram(ACK_BUCKETS))
    # (action, final status) -> issued to final, as this instance saw the command end
    command_seconds: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    fanout_sent: int = 0  # MQTT messages carrying this instance's live stream to the others
    fanout_received: int = 0  # such messages from other instances
    fanout_dropped: int = 0  # live-stream messages not sent: the broker was away, or too many waited
    fanout_refused: int = 0  # malformed messages on the fan-out topic
    pruned: Counter[str] = field(default_factory=Counter)  # rows deleted by retention, by table
    fanout_peers_listening: int = 0  # other instances with a stream open, as they last said
    fanout_ready: bool = False  # subscribed, and our own probe came back through the broker

    def observe_ack(self, seconds: float) -> None:
        self.ack.observe(seconds)

    def command_changed(self, row: Any) -> None:
        """A command's status changed here (``row``: its committed row): counted by status, and when final,
        how long it took from its issue, by action and outcome."""
        self.commands[row.status] += 1
        if CommandStatus(row.status).final:
            key = (row.action, row.status)
            series = self.command_seconds.get(key)
            if series is None:
                series = self.command_seconds[key] = Histogram(COMMAND_BUCKETS)
            series.observe(max(0.0, (row.updated_at - row.issued_at).total_seconds()))

    def render(self, gateways_online: int, gateways_skewed: int, device_id_clashes: int = 0) -> str:
        p = "steward_cloud_"
        lines = [
            f"# HELP {p}batches_total Event batches stored and acknowledged.",
            f"# TYPE {p}batches_total counter",
            f"{p}batches_total {self.batches}",
            f"# HELP {p}events_stored_total Events newly stored.",
            f"# TYPE {p}events_stored_total counter",
            f"{p}events_stored_total {self.events_stored}",
            f"# HELP {p}events_duplicate_total Redelivered events the store already had.",
            f"# TYPE {p}events_duplicate_total counter",
            f"{p}events_duplicate_total {self.events_duplicate}",
            f"# HELP {p}events_rejected_total Invalid events of stored batches, kept in rejected_events.",
            f"# TYPE {p}events_rejected_total counter",
            f"{p}events_rejected_total {self.events_rejected}",
            f"# HELP {p}messages_rejected_total Uplink messages rejected, by reason.",
            f"# TYPE {p}messages_rejected_total counter",
            *(f'{p}messages_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())),
            f"# HELP {p}store_errors_total Uplink messages not stored because the database failed.",
            f"# TYPE {p}store_errors_total counter",
            f"{p}store_errors_total {self.store_errors}",
            f"# HELP {p}command_updates_total Command status changes, by status.",
            f"# TYPE {p}command_updates_total counter",
            *(f'{p}command_updates_total{{status="{s}"}} {n}' for s, n in sorted(self.commands.items())),
            f"# HELP {p}ack_latency_seconds Batch dequeued to its ack PUBACKed.",
            f"# TYPE {p}ack_latency_seconds histogram",
            *self.ack.lines(f"{p}ack_latency_seconds"),
            f"# HELP {p}command_duration_seconds Commands issued to final (the operator's wait: a gate's"
            " travel included), by action and outcome, for those whose end this instance saw.",
            f"# TYPE {p}command_duration_seconds histogram",
            *(
                line
                for (action, status), series in sorted(self.command_seconds.items())
                for line in series.lines(
                    f"{p}command_duration_seconds", f'action="{action}",outcome="{status}"'
                )
            ),
            f"# HELP {p}gateways_online Gateways currently online.",
            f"# TYPE {p}gateways_online gauge",
            f"{p}gateways_online {gateways_online}",
            f"# HELP {p}gateways_clock_skewed Gateways whose clock is off by more than max_clock_skew_s.",
            f"# TYPE {p}gateways_clock_skewed gauge",
            f"{p}gateways_clock_skewed {gateways_skewed}",
            f"# HELP {p}device_id_clashes Device ids a site's gateway named that another site holds"
            " (distinct device and claiming site, seen by this process; see registry.device_id_taken).",
            f"# TYPE {p}device_id_clashes gauge",
            f"{p}device_id_clashes {device_id_clashes}",
            f"# HELP {p}retention_deleted_total Rows deleted by retention, by table.",
            f"# TYPE {p}retention_deleted_total counter",
            *(
                f'{p}retention_deleted_total{{table="{t}"}} {self.pruned[t]}'
                for t in ("events", "readings", "rejected_events")
            ),
            f"# HELP {p}fanout_messages_total Live-stream messages between cloud instances, by outcome.",
            f"# TYPE {p}fanout_messages_total counter",
            f'{p}fanout_messages_total{{outcome="sent"}} {self.fanout_sent}',
            f'{p}fanout_messages_total{{outcome="received"}} {self.fanout_received}',
            f'{p}fanout_messages_total{{outcome="refused"}} {self.fanout_refused}',
            f"# HELP {p}fanout_dropped_total Live-stream updates not sent to the other instances"
            " (broker away, or too many waiting).",
            f"# TYPE {p}fanout_dropped_total counter",
            f"{p}fanout_dropped_total {self.fanout_dropped}",
            f"# HELP {p}fanout_ready 1 once the broker has delivered this instance's own fan-out probe back"
            " (0: fan-out off, or the broker does not deliver the topic; see fanout.not_delivered).",
            f"# TYPE {p}fanout_ready gauge",
            f"{p}fanout_ready {int(self.fanout_ready)}",
            f"# HELP {p}fanout_peers_listening Other cloud instances with a live stream open (they get this"
            " instance's events).",
            f"# TYPE {p}fanout_peers_listening gauge",
            f"{p}fanout_peers_listening {self.fanout_peers_listening}",
        ]
        return "\n".join(lines) + "\n"
