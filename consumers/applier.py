"""The apply loop, one step: read batch -> decode/validate -> one script call per partition -> record.

A failed call is retried from the pending list; a batch that failed ``max_deliveries`` times with
a script error is applied entry by entry and what still fails goes to the dead letters.  Under
load the step lingers so the next calls are larger (``linger_ms`` above ``linger_above_rate``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from redis.exceptions import ResponseError

from shopstream.engine.batch import apply_args, decode_entries
from shopstream.engine.catalog import Catalog
from shopstream.engine.connection import UNAVAILABLE
from shopstream.engine.keys import Partition
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.scripts import NotOwner, Scripts, translate
from shopstream.engine.settings import Settings

from . import deadletters
from .clock import Clock
from .deadletters import DeadLetterWriter
from .leases import Leases
from .outbox import Forwarder
from .reader import Reader
from .recorder import Recorder
from .watermarks import WatermarkAdvancer

log = logging.getLogger("shopstream.consumer")

READ_MARGIN_S = 0.05         # a read must end this long before our lease could expire
RATE_WINDOW_S = 0.5          # the input rate that decides lingering is measured over this long
MAX_FAILURES_UNTIL_IDLE = 20  # a bounded run gives up (exit 1) instead of retrying a broken apply forever
RETRY_PAUSE_S = 0.5


def is_script_error(error: Exception) -> bool:
    """A failure of the script on this data (worth isolating), not of Redis (OOM, LOADING, ...) nor
    of the script itself (a script that does not compile must not dead-letter every entry)."""
    text = str(error)
    if "error loading code" in text or "Error compiling script" in text:
        return False
    return "user_script" in text or "Error running script" in text


def _batch_key(p: int, entries: list) -> tuple:
    """A batch, for counting its failures: its partition and its first entry (source, id)."""
    source, (entry_id, _) = entries[0]
    return p, source, entry_id


class InputRate:
    """Input events/s per owned partition, over windows of at least RATE_WINDOW_S."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.per_partition = 0.0
        self._window_start, self._window_read = clock.monotonic(), 0

    def observe(self, read: int, partitions: int) -> None:
        now = self.clock.monotonic()
        self._window_read += read
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_S:
            self.per_partition = self._window_read / elapsed / max(partitions, 1)
            self._window_start, self._window_read = now, 0


class Applier:
    def __init__(self, *, settings: Settings, name: str, parts: list[Partition], scripts: Scripts,
                 rules: Callable[[], bytes], catalog: Catalog, leases: Leases, reader: Reader,
                 dead_letters: DeadLetterWriter, forwarder: Forwarder, watermarks: WatermarkAdvancer,
                 recorder: Recorder, metrics: ConsumerMetrics, clock: Clock, client: Any, until_idle: bool):
        self.settings, self.name, self.parts, self.scripts, self.rules = settings, name, parts, scripts, rules
        self.catalog, self.leases, self.reader, self.dead_letters = catalog, leases, reader, dead_letters
        self.forwarder, self.watermarks, self.recorder = forwarder, watermarks, recorder
        self.metrics, self.clock, self.client, self.until_idle = metrics, clock, client, until_idle
        self.rate = InputRate(clock)
        self.round_outbox: list | None = None        # during a round: (p, outbox entries) forwarded at its end
        self.failures = 0                            # consecutive failed apply calls
        self.batch_failures: dict[tuple, int] = {}   # (partition, first entry's source and id) -> failures

    async def step(self) -> bool:
        """One round over the owned partitions; True when it read something."""
        s = self.settings
        # a read may wait block_ms in Redis: only partitions whose lease holds that long and more
        owned = self.leases.readable(margin_s=s.block_ms / 1000 + READ_MARGIN_S)
        if not owned:
            await self.clock.sleep(s.block_ms / 1000)
            return False
        batches = await self.reader.read(owned)
        read = sum(len(b.entries) for b in batches)
        self.rate.observe(read, len(owned))
        # Partitions are independent: while Redis runs one partition's apply script, the next
        # partition's batch is decoded (each process() decodes, then awaits its script call).
        # All of them finish before an error (e.g. Redis unavailable) goes up: no apply of this
        # round can still be in flight when the next round reads.
        # The calls' outbox records go to their partitions once, at the end of the round (one round
        # trip instead of one per call); until then they wait in the outboxes, where a new owner
        # would find them (Reader.read forwards a recovering partition's outbox first).
        self.round_outbox = []
        try:
            outcomes = await asyncio.gather(*(self.process(b.p, b.entries) for b in batches),
                                            return_exceptions=True)
        finally:
            due, self.round_outbox = self.round_outbox, None
        if due:
            await self.forwarder.forward_round(due)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for b in batches:
            if b.from_pending and not b.full:
                self.leases.recovered(b.p)
        await self.watermarks.advance_idle(owned)
        busy = self.rate.per_partition >= s.linger_above_rate
        if s.linger_ms and busy and not any(b.full for b in batches):
            # Under load only (like Kafka's linger.ms, but only when busy): when the partitions take
            # in more than linger_above_rate events/s each, let entries accumulate so the next calls
            # are larger and cheaper per event (at saturation: +20 % events/s).  Below it, go on at
            # once: detection latency is the round itself (docs/benchmarks.md).  The rate does not
            # depend on the linger, so the choice does not feed on itself.  A full read means a
            # backlog: the next read is full anyway, no waiting.
            await self.clock.sleep(s.linger_ms / 1000)
        return read > 0

    async def process(self, p: int, entries: list) -> None:
        started = self.clock.monotonic()
        self.watermarks.saw_input(p)
        if not entries:
            return
        error = await self.apply(p, entries)
        if error is not None:
            self.metrics.errors.inc()
            self.failures += 1
            key = _batch_key(p, entries)
            self.batch_failures[key] = self.batch_failures.get(key, 0) + 1
            if is_script_error(error) and self.batch_failures[key] >= self.settings.max_deliveries:
                del self.batch_failures[key]
                await self.isolate_poison(p, entries, error)
                return
            if self.until_idle and self.failures >= MAX_FAILURES_UNTIL_IDLE:
                raise RuntimeError(f"partition {p}: apply failed {self.failures} times in a row: {error}")
            self.leases.mark_recovering(p)      # retry from the pending list
            log.error("partition %d: apply failed (%d), will retry: %s", p, self.batch_failures.get(key, 0), error)
            await self.clock.sleep(RETRY_PAUSE_S)
            return
        self.failures = 0
        self.batch_failures.pop(_batch_key(p, entries), None)
        self.metrics.batch_seconds.observe(self.clock.monotonic() - started)
        self.metrics.batch_events.observe(len(entries))

    async def apply(self, p: int, entries: list) -> Exception | None:
        """Decode, dead-letter the bad records, apply the rest in one script call.
        Returns the script's error (None when applied; a lost lease is handled here)."""
        now_us = self.clock.wall_us()
        decoded = decode_entries(entries, p, now_us, self.settings, self.catalog.category)
        if decoded.dead:
            await self.dead_letters.write(p, decoded.dead)
        if not decoded.count:
            return None
        args = apply_args(self.settings, self.name, now_us, self.rules(), decoded.events)
        try:
            reply = await self.scripts.run("apply_batch", self.parts[p], args)
        except UNAVAILABLE:
            raise                       # not a failure of this batch: the runner waits and recovers
        except ResponseError as exc:
            error = translate(exc)
            if isinstance(error, NotOwner):
                log.warning("partition %d: lease lost before apply; its new owner takes the batch", p)
                self.leases.lose(p)
                return None
            return error
        self.recorder.applied(p, reply)
        if reply.applied:
            self.watermarks.saw_data(p)
        if reply.poison:
            await self.dead_letters.write(p, deadletters.from_poison(entries, reply.poison))
        if reply.outbox:
            entries = [(entry.entry_id, entry.records) for entry in reply.outbox]
            if self.round_outbox is not None:
                self.round_outbox.append((p, entries))
            else:
                await self.forwarder.forward(p, entries)
        if reply.more:            # more was due than one call closes: close the rest, call by call
            await self.watermarks.advance_to(p, 0)
        return None

    async def isolate_poison(self, p: int, entries: list, error: Exception) -> None:
        """A batch failed max_deliveries times: apply its entries one by one; each one that still
        fails goes to the dead-letter stream with the error and its delivery count."""
        s = self.settings
        log.warning("partition %d: batch failed %d times (%s); isolating the poison entry", p, s.max_deliveries, error)
        for source, (entry_id, fields) in entries:
            single_error = await self.apply(p, [(source, (entry_id, fields))])
            if single_error is None:
                continue
            stream = self.parts[p].key(source)
            pending = await self.client.xpending_range(stream, s.group, min=entry_id, max=entry_id, count=1)
            deliveries = pending[0]["times_delivered"] if pending else 0
            await self.dead_letters.write(p, [deadletters.failed_apply(source, entry_id, fields, s.max_deliveries,
                                                                       deliveries, single_error)])
