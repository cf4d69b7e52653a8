"""Prometheus metrics of a consumer (namespace shopstream_, base units, bounded labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTCOMES = ("applied", "duplicate", "late", "dead_letter", "erased")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("shopstream_events_total", "Input entries handled, by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.events.labels(outcome)
        self.batch_seconds = Histogram("shopstream_batch_duration_seconds",
                                       "Decode + apply time of one partition batch", registry=r,
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.batch_events = Histogram("shopstream_batch_size_entries", "Entries per partition batch", registry=r,
                                      buckets=(1, 10, 100, 500, 1000, 2000, 5000))
        self.detection = Histogram("shopstream_detection_latency_seconds",
                                   "Triggering entry appended to Redis -> alert published", registry=r,
                                   buckets=LATENCY_BUCKETS)
        self.guarded = Counter("shopstream_guarded_events_total",
                               "Hostile-input guards: clicks ahead of the partition clock (clock_ahead), "
                               "values a per-user cap left out (capped)", ["guard"], registry=r)
        for guard in ("clock_ahead", "capped"):
            self.guarded.labels(guard)
        self.alerts = Counter("shopstream_alerts_total", "Alerts emitted, by rule", ["rule"], registry=r)
        self.sessions = Counter("shopstream_sessions_closed_total", "Sessions closed and emitted", registry=r)
        self.minutes = Counter("shopstream_minutes_finalized_total", "Per-minute metrics finalized", registry=r)
        self.errors = Counter("shopstream_apply_errors_total", "Apply calls that failed (retried)", registry=r)
        self.owned = Gauge("shopstream_owned_partitions", "Partitions this consumer owns", registry=r)
        self.pending = Gauge("shopstream_pending_entries", "Delivered, not yet acknowledged", ["partition"],
                             registry=r)
        self.lag = Gauge("shopstream_consumer_lag_entries", "Entries not yet delivered to the group",
                         ["partition"], registry=r)
        self.watermark = Gauge("shopstream_watermark_seconds", "Partition watermark (event time, epoch s)",
                               ["partition"], registry=r)

    def serve(self, port: int) -> int:
        """Serve /metrics on ``port`` (0 = any free port); returns the port."""
        server, _thread = start_http_server(port, registry=self.registry)
        return server.server_address[1]
