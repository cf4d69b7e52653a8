"""Lag and pending entries of the owned partitions, as gauges (refreshed every heartbeat).

Redis's own XINFO lag can stay stale after an AOF rewrite and a restart; ``offsets`` remembers
that stale part per stream while caught up, so the gauge says 0 (engine/control.py group_state)."""

from __future__ import annotations

from typing import Any

from shopstream.engine.control import group_state
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.settings import Settings

from .leases import Leases


class LagObserver:
    def __init__(self, client: Any, settings: Settings, leases: Leases, metrics: ConsumerMetrics):
        self.client, self.settings, self.leases, self.metrics = client, settings, leases, metrics
        self.offsets: dict[str, int] = {}       # stream -> stale XINFO lag seen while caught up

    async def observe(self) -> None:
        owned = sorted(self.leases.owned)
        for p, (pending, lag) in (await group_state(self.client, self.settings, owned, self.offsets)).items():
            if not self.leases.owns(p):        # released while we asked: its series are gone, keep it so
                continue
            self.metrics.pending.labels(str(p)).set(pending)
            self.metrics.lag.labels(str(p)).set(lag)
