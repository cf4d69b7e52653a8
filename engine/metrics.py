"""Prometheus metrics of a consumer (namespace shopstream_, base units, bounded labels)."""

from __future__ import annotations

import errno
import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("shopstream.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTCOMES = ("applied", "duplicate", "late", "dead_letter", "erased")
PORT_TRIES = 64            # port taken (another consumer on this host): the next ones, then any free port

# The producer is a library: its counter lives in the default registry of the process that embeds it.
BACKPRESSURE = Counter("shopstream_producer_backpressure_total",
                       "publish() calls refused: an input stream was at input_hard_cap", ["source"], registry=REGISTRY)


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
        self.input_cap = Gauge("shopstream_input_cap_entries",
                               "input_hard_cap: producers get BackPressure when an input stream holds this many",
                               registry=r)
        self.trimmed = Counter("shopstream_input_trimmed_total",
                               "Input entries trimmed (acknowledged by every group, older than input_retention_ms)",
                               registry=r)

    def forget_partition(self, p: int) -> None:
        """The partition moved to another consumer: stop exporting its series here (its new owner
        exports them; two consumers reporting one partition would double its lag in every sum)."""
        for gauge in (self.pending, self.lag, self.watermark):
            try:
                gauge.remove(str(p))
            except KeyError:
                pass

    def serve(self, port: int) -> int:
        """Serve /metrics on ``port`` (0 = any free port); returns the port.  When ``port`` is taken
        (the usual cause: another consumer on this host), the next free one of the PORT_TRIES
        following it, else any free port, with a warning: consumers side by side each get their
        own (9108, 9109, ...), in a range a scrape config can list."""
        candidates = [port + i for i in range(PORT_TRIES) if port + i <= 65535] + [0] if port else [0]
        for candidate in candidates:
            try:
                server, _thread = start_http_server(candidate, registry=self.registry)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            chosen = server.server_address[1]
            if port and chosen != port:
                log.warning("metrics port %d is taken (another consumer on this host?): serving /metrics on "
                            "port %d instead", port, chosen)
            return chosen
        raise OSError(errno.EADDRINUSE, "no free port for /metrics")
