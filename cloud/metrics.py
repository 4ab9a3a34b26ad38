"""Counters the cloud keeps in memory and renders in Prometheus text format at ``/metrics``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
    ack_count: int = 0
    ack_sum: float = 0.0
    ack_buckets: list[int] = field(default_factory=lambda: [0] * len(ACK_BUCKETS))
    fanout_sent: int = 0  # MQTT messages carrying this instance's live stream to the others
    fanout_received: int = 0  # such messages from other instances
    fanout_dropped: int = 0  # live-stream messages not sent: the broker was away, or too many waited
    fanout_refused: int = 0  # malformed messages on the fan-out topic
    pruned: Counter[str] = field(default_factory=Counter)  # rows deleted by retention, by table
    fanout_peers_listening: int = 0  # other instances with a stream open, as they last said
    fanout_ready: bool = False  # subscribed, and our own probe came back through the broker

    def observe_ack(self, seconds: float) -> None:
        self.ack_count += 1
        self.ack_sum += seconds
        for i, bound in enumerate(ACK_BUCKETS):
            if seconds <= bound:
                self.ack_buckets[i] += 1

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
            *(
                f'{p}ack_latency_seconds_bucket{{le="{b}"}} {n}'
                for b, n in zip(ACK_BUCKETS, self.ack_buckets, strict=True)
            ),
            f'{p}ack_latency_seconds_bucket{{le="+Inf"}} {self.ack_count}',
            f"{p}ack_latency_seconds_sum {self.ack_sum:.6f}",
            f"{p}ack_latency_seconds_count {self.ack_count}",
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
