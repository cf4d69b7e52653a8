"""What the scripts report, as metrics and log lines: the last step of the apply loop."""

from __future__ import annotations

import logging

from shopstream.engine.contract import AlertRef, ApplyReply
from shopstream.engine.control import Advanced
from shopstream.engine.metrics import ConsumerMetrics

from .clock import Clock
from .leases import Leases

log = logging.getLogger("shopstream.consumer")


class Recorder:
    def __init__(self, metrics: ConsumerMetrics, leases: Leases, clock: Clock):
        self.metrics, self.leases, self.clock = metrics, leases, clock

    def applied(self, p: int, reply: ApplyReply) -> None:
        m = self.metrics
        m.events.labels("applied").inc(reply.applied)
        m.events.labels("erased").inc(reply.erased)
        m.events.labels("duplicate").inc(reply.duplicates)
        m.events.labels("late").inc(reply.late)
        m.sessions.inc(reply.sessions_closed)
        m.minutes.inc(reply.minutes_finalized)
        if self.leases.owns(p):               # not a partition lost while its batch was applied
            m.watermark.labels(str(p)).set(reply.watermark_us / 1e6)
        m.guarded.labels("clock_ahead").inc(reply.ahead)
        m.guarded.labels("capped").inc(reply.capped)
        self.alerts(reply.alerts)

    def advanced(self, p: int, done: Advanced) -> None:
        self.metrics.sessions.inc(done.closed)
        self.metrics.minutes.inc(done.finalized)
        self.metrics.watermark.labels(str(p)).set(done.watermark_us / 1e6)
        self.alerts(done.alerts)

    def alerts(self, alerts: list[AlertRef]) -> None:
        now_ms = self.clock.wall_us() / 1000
        for alert in alerts:
            rule = alert.rule.decode()
            if alert.entry_id:      # '' for an alert raised by a session closing (no triggering entry)
                appended_ms = int(alert.entry_id.split(b"-", 1)[0])
                self.metrics.detection.observe(max(now_ms - appended_ms, 0) / 1000)
            self.metrics.alerts.labels(rule).inc()
            log.info("alert %s subject=%r window_start_us=%d", rule, alert.subject.decode(), alert.window_start_us)
