"""One consumer of the group: its parts, wired together.

Several consumers run side by side in one consumer group; each partition is applied by the
one consumer holding its lease (consumers/leases.py), in stream order.  Each job has its module:

    runner.py       the process (/metrics, signals, uvloop) and the lifecycle (join, heartbeat task, leave)
    applier.py      one step: read -> decode -> one script call per partition -> record; linger, retries
    reader.py       XREADGROUP of the owned partitions (single node: one BLOCKing read; cluster: per master)
    deadletters.py  the one dead-letter writer (bad records, poison entries, entries that keep failing)
    outbox.py       records for other partitions -> their rekey streams
    watermarks.py   the idle advance and the continuation of bounded closes
    lag.py          pending / lag gauges of the owned partitions
    recorder.py     script replies -> metrics and alert log lines
    leases.py       membership and per-partition leases
    clock.py        wall clock, monotonic clock and sleep, injected (tests use ManualClock)
"""

from __future__ import annotations

import asyncio
from typing import Any

from shopstream.engine.catalog import Catalog
from shopstream.engine.connection import is_cluster_client
from shopstream.engine.keys import Keys
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.rules import RulesFile
from shopstream.engine.scripts import Scripts
from shopstream.engine.settings import Settings

from .applier import READ_MARGIN_S, Applier
from .clock import Clock, SystemClock
from .deadletters import DeadLetterWriter
from .lag import LagObserver
from .leases import Leases
from .outbox import Forwarder
from .reader import Batch, Reader
from .recorder import Recorder
from .runner import Runner
from .watermarks import WatermarkAdvancer


class Consumer:
    def __init__(self, client: Any, settings: Settings, name: str, *, metrics: ConsumerMetrics | None = None,
                 until_idle: bool = False, idle_advance: bool = True, clock: Clock | None = None):
        if settings.lease_ttl_ms / 1000 <= settings.heartbeat_ms / 1000 + settings.block_ms / 1000 + READ_MARGIN_S:
            raise ValueError(f"lease_ttl_ms ({settings.lease_ttl_ms}) must exceed heartbeat_ms + block_ms + "
                             f"{READ_MARGIN_S * 1000:.0f} ms: a lease must outlive a renewal period and a read")
        self.client, self.settings, self.name = client, settings, name
        self.until_idle = until_idle
        self.clock = clock or SystemClock()
        self.metrics = metrics or ConsumerMetrics()
        self.metrics.input_cap.set(settings.input_hard_cap)
        self.keys = Keys(settings.namespace, settings.partitions)
        parts = self.keys.all_partitions()
        cluster = is_cluster_client(client)
        self.scripts = Scripts(client)
        self.rules = RulesFile(settings.rules_file)       # replaceable: the parts read it through rules()
        self.catalog = Catalog(settings)
        self.stopping = asyncio.Event()
        self.leases = Leases(client, self.scripts, settings, name, on_drop=self.metrics.forget_partition,
                             clock=self.clock)
        self.recorder = Recorder(self.metrics, self.leases, self.clock)
        self.lag = LagObserver(client, settings, self.leases, self.metrics)
        self.forwarder = Forwarder(client, settings, parts, cluster)
        self.dead_letters = DeadLetterWriter(client, settings, self.keys, self.metrics, self.clock, cluster)
        self.watermarks = WatermarkAdvancer(client, self.scripts, settings, parts, name, self._rules, self.leases,
                                            self.recorder, self.clock,
                                            enabled=idle_advance and settings.idle_timeout_ms > 0)
        self.reader = Reader(client, settings, name, parts, cluster, self.leases, self.forwarder, self.clock)
        self.applier = Applier(settings=settings, name=name, parts=parts, scripts=self.scripts, rules=self._rules,
                               catalog=self.catalog, leases=self.leases, reader=self.reader,
                               dead_letters=self.dead_letters, forwarder=self.forwarder, watermarks=self.watermarks,
                               recorder=self.recorder, metrics=self.metrics, clock=self.clock, client=client,
                               until_idle=until_idle)

    def _rules(self) -> bytes:
        return self.rules.current()

    async def run(self) -> None:
        """Join, apply until stopped (or, until_idle, until every partition is drained), leave."""
        await Runner(self).run()

    def stop(self) -> None:
        """Finish the current batch, release the leases, leave (SIGTERM / SIGINT)."""
        self.stopping.set()

    # -- one step, and its parts (tests drive them directly) -----------------------------------
    async def step(self) -> bool:
        return await self.applier.step()

    async def read(self, owned: list[int]) -> list[Batch]:
        return await self.reader.read(owned)

    async def apply(self, p: int, entries: list) -> Exception | None:
        return await self.applier.apply(p, entries)
