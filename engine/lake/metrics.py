"""Prometheus metrics of an archiver (namespace shopstream_archive_, labels bounded by table)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .tables import TABLES


class ArchiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.rows = Counter("shopstream_archive_rows_total", "Rows committed to the lake, by table", ["table"],
                            registry=r)
        self.commits = Counter("shopstream_archive_commits_total", "Table commits", ["table"], registry=r)
        for table in TABLES:
            self.rows.labels(table.name)
            self.commits.labels(table.name)
        self.commit_seconds = Histogram("shopstream_archive_commit_duration_seconds",
                                        "One commit round: every table's write + XACK", registry=r,
                                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.skipped = Counter("shopstream_archive_redelivered_total",
                               "Entries found already in the lake after a restart (acknowledged only)", registry=r)
        self.dropped = Counter("shopstream_archive_erased_rows_total",
                               "Rows of users erased after they were read, not written", registry=r)
        self.buffered = Gauge("shopstream_archive_buffered_rows", "Rows read, not yet committed", registry=r)
        self.lag = Gauge("shopstream_archive_lag_entries", "Entries not yet delivered to the archive group, by table",
                         ["table"], registry=r)
        self.last_commit = Gauge("shopstream_archive_last_commit_timestamp_seconds", "Time of the last commit",
                                 registry=r)

    def serve(self, port: int) -> int:
        server, _thread = start_http_server(port, registry=self.registry)
        return server.server_address[1]
