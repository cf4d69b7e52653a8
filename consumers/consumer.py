"""The consumer process: read batch -> decode/validate -> one Lua call per partition -> metrics.

Several consumers run side by side in one consumer group; each partition is applied by the
one consumer holding its lease (consumers/leases.py), in stream order.

On a single Redis, one XREADGROUP reads every owned partition and BLOCKs while all are empty.
On a Redis Cluster the partitions' streams hash to different slots (one multi-stream read would
be CROSSSLOT), so each partition is read on its own: the reads go out as one pipeline per master,
the masters in parallel, without BLOCK (a blocked partition would hold up the round); a round that
finds nothing pauses ``poll_ms`` (the latency cost: at most poll_ms for the first event after a
quiet spell, nothing under load, when rounds are not empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from shopstream.engine.batch import SOURCE_CODE, DeadLetter, apply_args, decode_entries, merge_sources, payload_of
from shopstream.engine.catalog import Catalog
from shopstream.engine.contract import AlertRef, ApplyReply
from shopstream.engine.connection import UNAVAILABLE, is_cluster_client
from shopstream.engine.control import advance, drained, ensure_groups, group_state
from shopstream.engine.keys import INPUTS, OUTBOX, REKEY, Keys
from shopstream.engine.partitioning import partition_of
from shopstream.engine.retention import trim_inputs
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.rules import RulesFile
from shopstream.engine.scripts import NotOwner, Scripts, translate
from shopstream.engine.settings import Settings

from .leases import Leases

log = logging.getLogger("shopstream.consumer")
_records = msgspec.json.Decoder(list[list])

STRAY_CLAIM_EVERY = 10      # heartbeats between sweeps for entries stuck in other consumers' lists
TRIM_EVERY = 5              # heartbeats between trims of the owned partitions' acknowledged input
READ_MARGIN_S = 0.05         # a read must end this long before our lease could expire
RATE_WINDOW_S = 0.5          # the input rate that decides lingering is measured over this long
MAX_FAILURES_UNTIL_IDLE = 20  # a bounded run gives up (exit 1) instead of retrying a broken apply forever


def _is_script_error(error: Exception) -> bool:
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


def _streams(reply) -> list:
    """A raw XREADGROUP reply as (stream, entries) pairs: a map under RESP3, a list under RESP2."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else reply


class Consumer:
    def __init__(self, client: Any, settings: Settings, name: str, *, metrics: ConsumerMetrics | None = None,
                 until_idle: bool = False, idle_advance: bool = True):
        if settings.lease_ttl_ms / 1000 <= settings.heartbeat_ms / 1000 + settings.block_ms / 1000 + READ_MARGIN_S:
            raise ValueError(f"lease_ttl_ms ({settings.lease_ttl_ms}) must exceed heartbeat_ms + block_ms + "
                             f"{READ_MARGIN_S * 1000:.0f} ms: a lease must outlive a renewal period and a read")
        self.client, self.settings, self.name = client, settings, name
        self.metrics = metrics or ConsumerMetrics()
        self.metrics.input_cap.set(settings.input_hard_cap)
        self.until_idle = until_idle
        self.idle_advance = idle_advance and settings.idle_timeout_ms > 0
        self.keys = Keys(settings.namespace, settings.partitions)
        self.parts = self.keys.all_partitions()
        self.stream_source = {stream.encode(): (p.p, source) for p in self.parts
                              for source, stream in zip(INPUTS, p.inputs)}
        self.scripts = Scripts(client)
        self.rules = RulesFile(settings.rules_file)
        self.catalog = Catalog(settings)
        # reads skip redis-py's per-entry dict building: entries stay [id, [field, value, ...]]; on a
        # single Redis through a second client sharing the pool; a RedisCluster has no pool to share
        # (one per node), so the consumer's own cluster client gets the raw XREADGROUP callback
        self.cluster = is_cluster_client(client)
        self.reader = client if self.cluster else type(client)(connection_pool=client.connection_pool)
        self.reader.set_response_callback("XREADGROUP", lambda response, **_: response)
        self.leases = Leases(client, self.scripts, settings, name, on_drop=self.metrics.forget_partition)
        self.stopping = asyncio.Event()
        self.last_input: dict[int, float] = {}     # partition -> monotonic time of its last entry
        self.last_idle_tick: dict[int, float] = {}
        self.has_data: set[int] = set()
        self.failures = 0                           # consecutive failed apply calls
        self.rate_per_partition = 0.0               # input events/s per owned partition (linger under load)
        self._window_start, self._window_read = time.perf_counter(), 0
        self.batch_failures: dict[tuple, int] = {}   # (partition, first entry's source and id) -> failures
        self.closing = False
        self.lag_offsets: dict[str, int] = {}       # stream -> stale XINFO lag seen while caught up (control.py)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:                       # e.g. a cluster failing over as we start: join when it is back
            try:
                await ensure_groups(self.client, self.settings)
                await self.catalog.refresh(self.client)
                await self.leases.heartbeat()
                break
            except UNAVAILABLE as exc:
                if self.stopping.is_set():
                    return
                log.warning("redis unavailable (%s); joining again", exc)
                await asyncio.sleep(0.5)
        beat = asyncio.create_task(self._heartbeat_loop())
        try:
            while not self.stopping.is_set():
                try:
                    if self.leases.to_release:
                        await self.leases.release(set(self.leases.to_release))
                    worked = await self.step()
                    if not worked and self.until_idle and await drained(self.client, self.settings):
                        log.info("all partitions drained; exiting")
                        break
                except UNAVAILABLE as exc:
                    # a read or an apply may have been lost on the way (entries delivered to us, or
                    # applied on a master that died before replicating): our pending entries first
                    log.warning("redis unavailable (%s); retrying from our pending entries", exc)
                    self.leases.recovering |= self.leases.owned
                    await asyncio.sleep(0.5)
        finally:
            self.closing = True          # the heartbeat loop also ends by itself at its next turn
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            try:
                await self.leases.leave()
            except UNAVAILABLE:
                pass

    def stop(self) -> None:
        """Finish the current batch, release the leases, leave (SIGTERM / SIGINT)."""
        self.stopping.set()

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while not self.closing:
            await asyncio.sleep(self.settings.heartbeat_ms / 1000)
            try:
                await self.leases.heartbeat()
                beats += 1
                if beats % STRAY_CLAIM_EVERY == 0:
                    for p in sorted(self.leases.owned):
                        await self.leases.claim_pending(p, min_idle_ms=2 * self.settings.lease_ttl_ms)
                if beats % TRIM_EVERY == 0 and self.leases.owned:
                    self.metrics.trimmed.inc(await trim_inputs(self.client, self.settings, sorted(self.leases.owned)))
                await self.observe_lag()
                await self.catalog.refresh(self.client)
            except UNAVAILABLE as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a heartbeat must never die silently
                log.exception("heartbeat error")
            self.metrics.owned.set(len(self.leases.owned))

    # -- one step: read -> decode -> apply -> metrics ------------------------------------------
    async def step(self) -> bool:
        # a read may wait block_ms in Redis: only partitions whose lease holds that long and more
        owned = self.leases.readable(margin_s=self.settings.block_ms / 1000 + READ_MARGIN_S)
        if not owned:
            await asyncio.sleep(self.settings.block_ms / 1000)
            return False
        batches = await self.read(owned)
        read = sum(len(entries) for _, entries, _, _ in batches)
        self._observe_rate(read, len(owned))
        # Partitions are independent: while Redis runs one partition's apply script, the next
        # partition's batch is decoded (each process() decodes, then awaits its script call).
        # All of them finish before an error (e.g. Redis unavailable) goes up: no apply of this
        # round can still be in flight when the next round reads.
        for outcome in await asyncio.gather(*(self.process(p, entries) for p, entries, _, _ in batches),
                                            return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        for p, _, from_pending, full in batches:
            if from_pending and not full:
                self.leases.recovering.discard(p)
        if self.idle_advance:
            await self.advance_idle(owned)
        busy = self.rate_per_partition >= self.settings.linger_above_rate
        if self.settings.linger_ms and busy and not any(full for _, _, _, full in batches):
            # Under load only (like Kafka's linger.ms, but only when busy): when the partitions take
            # in more than linger_above_rate events/s each, let entries accumulate so the next calls
            # are larger and cheaper per event (at saturation: +20 % events/s).  Below it, go on at
            # once: detection latency is the round itself (docs/benchmarks.md).  The rate does not
            # depend on the linger, so the choice does not feed on itself.  A full read means a
            # backlog: the next read is full anyway, no waiting.
            await asyncio.sleep(self.settings.linger_ms / 1000)
        return read > 0

    def _observe_rate(self, read: int, partitions: int) -> None:
        """Input rate per owned partition (events/s), over windows of at least RATE_WINDOW_S."""
        now = time.perf_counter()
        self._window_read += read
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_S:
            self.rate_per_partition = self._window_read / elapsed / max(partitions, 1)
            self._window_start, self._window_read = now, 0

    def _by_partition(self, reply, from_pending: bool) -> list[tuple[int, list, bool, bool]]:
        """(partition, its entries of every input stream merged in id order, from_pending, full)."""
        grouped: dict[int, dict[str, list]] = {}
        full: set[int] = set()
        for stream, entries in _streams(reply):
            p, source = self.stream_source[stream]
            grouped.setdefault(p, {})[source] = entries
            if len(entries) >= self.settings.batch_size:
                full.add(p)
        return [(p, merge_sources(by_source), from_pending, p in full) for p, by_source in grouped.items()]

    async def read(self, owned: list[int]) -> list[tuple[int, list, bool, bool]]:
        recovering = [p for p in owned if p in self.leases.recovering]
        if recovering:
            for p in recovering:                  # records a previous owner left in the outbox
                await self.forward(p)
            got = self._by_partition(await self.xreadgroup(recovering, "0"), True)
            # a partition with nothing pending any more is recovered
            seen = {p for p, _, _, _ in got}
            for p in recovering:
                if p not in seen:
                    self.leases.recovering.discard(p)
            return got
        return self._by_partition(await self.xreadgroup(owned, ">"), False)

    async def xreadgroup(self, partitions: list[int], last_id: str) -> list:
        """(stream, entries) pairs of a read of the partitions' input streams from last_id ("0": our
        pending entries, ">": new ones; only a read of new ones waits when there is nothing)."""
        s = self.settings
        block = s.block_ms if last_id == ">" else None
        if not self.cluster:
            streams = {stream: last_id for p in partitions for stream in self.parts[p].inputs}
            return _streams(await self.reader.xreadgroup(s.group, self.name, streams, count=s.batch_size,
                                                         block=block))
        # A partition's input streams share its slot: one XREADGROUP per partition. XREADGROUP's keys
        # are "movable": redis-py would ask a server (COMMAND GETKEYS, one more round trip) where each
        # read goes; the partition's slot says it directly.
        pipe = self.reader.pipeline(transaction=False)
        for p in partitions:
            inputs = self.parts[p].inputs
            pipe.execute_command("XREADGROUP", "GROUP", s.group, self.name, "COUNT", s.batch_size, "STREAMS",
                                 *inputs, *[last_id] * len(inputs),
                                 target_nodes=self.reader.get_node_from_key(inputs[0]))
        reply = [pair for one in await pipe.execute() for pair in _streams(one)]
        if not reply and block:
            await asyncio.sleep(s.poll_ms / 1000)
        return reply

    async def process(self, p: int, entries: list) -> None:
        started = time.perf_counter()
        self.last_input[p] = time.monotonic()
        if not entries:
            return
        error = await self.apply(p, entries)
        if error is not None:
            self.metrics.errors.inc()
            self.failures += 1
            key = _batch_key(p, entries)
            self.batch_failures[key] = self.batch_failures.get(key, 0) + 1
            if _is_script_error(error) and self.batch_failures[key] >= self.settings.max_deliveries:
                del self.batch_failures[key]
                await self.isolate_poison(p, entries, error)
                return
            if self.until_idle and self.failures >= MAX_FAILURES_UNTIL_IDLE:
                raise RuntimeError(f"partition {p}: apply failed {self.failures} times in a row: {error}")
            self.leases.recovering.add(p)      # retry from the pending list
            log.error("partition %d: apply failed (%d), will retry: %s", p, self.batch_failures.get(key, 0), error)
            await asyncio.sleep(0.5)
            return
        self.failures = 0
        self.batch_failures.pop(_batch_key(p, entries), None)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_events.observe(len(entries))

    async def apply(self, p: int, entries: list) -> Exception | None:
        """Decode, dead-letter the bad records, apply the rest in one script call.
        Returns the script's error (None when applied; a lost lease is handled here)."""
        now_us = time.time_ns() // 1000
        decoded = decode_entries(entries, p, now_us, self.settings, self.catalog.category)
        if decoded.dead:
            await self.dead_letter(p, decoded.dead)
        if not decoded.count:
            return None
        args = apply_args(self.settings, self.name, now_us, self.rules.current(), decoded.events)
        try:
            reply = await self.scripts.run("apply_batch", self.parts[p], args)
        except UNAVAILABLE:
            raise                       # not a failure of this batch: run() waits and recovers
        except ResponseError as exc:
            error = translate(exc)
            if isinstance(error, NotOwner):
                log.warning("partition %d: lease lost before apply; its new owner takes the batch", p)
                self.leases.drop(p)
                return None
            return error
        self.record(p, reply)
        if reply.poison:
            payloads = {(source, entry_id): fields for source, (entry_id, fields) in entries}
            sources = {code.encode(): source for source, code in SOURCE_CODE.items()}
            dead = []
            for poison in reply.poison:
                source = sources[poison.source]
                fields = payloads[(source, poison.entry_id)]
                dead.append(DeadLetter(poison.entry_id, payload_of(fields) or b"", poison.reason.decode(), source))
            await self.dead_letter(p, dead)
        if reply.outbox:
            await self.forward(p, [(entry.entry_id, entry.records) for entry in reply.outbox])
        if reply.more:            # more was due than one call closes: close the rest, call by call
            await self.advance_to(p, 0)
        return None

    async def forward(self, p: int, entries: list | None = None) -> int:
        """Send the records of partition p's outbox entries to the rekey stream of the partition of
        each record's key (its second field), then delete the entries: at-least-once, and what a
        record changes is idempotent (lua/includes/rules.lua).  Without ``entries``: whatever a
        previous owner left in the outbox."""
        outbox, moved = self.parts[p].key(OUTBOX), 0
        while True:
            if entries is None:
                page = await self.client.xrange(outbox, count=500)
                batch = [(entry_id, fields[b"e"]) for entry_id, fields in page]
            else:
                batch, page = entries, []
            if not batch:
                return moved
            by_target: dict[int, list] = {}
            for _, payload in batch:
                for record in _records.decode(payload):
                    by_target.setdefault(partition_of(str(record[1]), self.settings.partitions), []).append(record)
            pipe = self.client.pipeline(transaction=False)
            for q, records in sorted(by_target.items()):
                pipe.xadd(self.parts[q].key(REKEY), {"e": msgspec.json.encode(records)})   # trimmed once read
            if self.cluster:         # the targets live on other masters: delete only once they have it
                await pipe.execute()
                pipe = self.client.pipeline(transaction=False)
            pipe.xdel(outbox, *[entry_id for entry_id, _ in batch])
            await pipe.execute()
            moved += len(batch)
            if entries is not None or len(page) < 500:
                return moved

    async def isolate_poison(self, p: int, entries: list, error: Exception) -> None:
        """A batch failed max_deliveries times: apply its entries one by one; each one that still
        fails goes to the dead-letter stream with the error and its delivery count."""
        log.warning("partition %d: batch failed %d times (%s); isolating the poison entry",
                    p, self.settings.max_deliveries, error)
        for source, (entry_id, fields) in entries:
            single_error = await self.apply(p, [(source, (entry_id, fields))])
            if single_error is None:
                continue
            stream = self.parts[p].key(source)
            pending = await self.client.xpending_range(stream, self.settings.group, min=entry_id, max=entry_id,
                                                       count=1)
            deliveries = pending[0]["times_delivered"] if pending else 0
            await self.dead_letter(p, [DeadLetter(entry_id, (fields and payload_of(fields)) or b"",
                                                  f"apply failed {self.settings.max_deliveries} times "
                                                  f"(delivered {deliveries} times): {single_error}", source)])

    def record(self, p: int, reply: ApplyReply) -> None:
        m = self.metrics
        m.events.labels("applied").inc(reply.applied)
        m.events.labels("erased").inc(reply.erased)
        m.events.labels("duplicate").inc(reply.duplicates)
        m.events.labels("late").inc(reply.late)
        m.sessions.inc(reply.sessions_closed)
        m.minutes.inc(reply.minutes_finalized)
        if p in self.leases.owned:               # not a partition lost while its batch was applied
            m.watermark.labels(str(p)).set(reply.watermark_us / 1e6)
        m.guarded.labels("clock_ahead").inc(reply.ahead)
        m.guarded.labels("capped").inc(reply.capped)
        if reply.applied:
            self.has_data.add(p)
        self.record_alerts(reply.alerts)

    def record_alerts(self, alerts: list[AlertRef]) -> None:
        now_ms = time.time() * 1000
        for alert in alerts:
            rule = alert.rule.decode()
            if alert.entry_id:      # '' for an alert raised by a session closing (no triggering entry)
                appended_ms = int(alert.entry_id.split(b"-", 1)[0])
                self.metrics.detection.observe(max(now_ms - appended_ms, 0) / 1000)
            self.metrics.alerts.labels(rule).inc()
            log.info("alert %s subject=%r window_start_us=%d", rule, alert.subject.decode(), alert.window_start_us)

    async def dead_letter(self, p: int, dead: list[DeadLetter]) -> None:
        """Bad records: to the dead-letter stream first, then acknowledged (at-least-once into the DLQ).
        On a cluster the DLQ and the partition live on different masters and one pipeline would
        send to both at once (the XACK could land first): there, two round trips."""
        s = self.settings
        pipe = self.client.pipeline(transaction=False)
        for d in dead:
            pipe.xadd(self.keys.dlq, {"payload": d.payload, "reason": d.reason, "stream": self.parts[p].key(d.source),
                                      "entry_id": d.entry_id, "partition": p,
                                      "at_ms": int(time.time() * 1000)},
                      maxlen=s.output_maxlen, approximate=True)
        if self.cluster:
            await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
        for source in {d.source for d in dead}:
            pipe.xack(self.parts[p].key(source), s.group, *[d.entry_id for d in dead if d.source == source])
        await pipe.execute()
        self.metrics.events.labels("dead_letter").inc(len(dead))
        for d in dead:
            log.info("dead-letter partition=%d entry=%s reason=%s", p, d.entry_id.decode(), d.reason)

    async def advance_idle(self, owned: list[int]) -> None:
        """Live mode: a partition without input for idle_timeout follows the wall clock."""
        s = self.settings
        now = time.monotonic()
        idle = s.idle_timeout_ms / 1000
        for p in owned:
            if p not in self.has_data:
                continue
            last = self.last_input.setdefault(p, now)
            if now - last < idle or now - self.last_idle_tick.get(p, 0.0) < s.heartbeat_ms / 1000:
                continue
            self.last_idle_tick[p] = now
            await self.advance_to(p, time.time_ns() // 1000 - (s.idle_timeout_ms + s.out_of_order_ms) * 1000)

    async def advance_to(self, p: int, target_us: int) -> None:
        """Move partition p's watermark to at least target_us and close what is due, in bounded calls."""
        try:
            done = await advance(self.client, self.scripts, self.parts[p], self.settings, target_us,
                                 self.rules.current(), self.name)
        except NotOwner:
            self.leases.drop(p)
            return
        self.metrics.sessions.inc(done.closed)
        self.metrics.minutes.inc(done.finalized)
        self.metrics.watermark.labels(str(p)).set(done.watermark_us / 1e6)
        self.record_alerts(done.alerts)

    # -- state of the group ----------------------------------------------------------------
    async def observe_lag(self) -> None:
        owned = sorted(self.leases.owned)
        for p, (pending, lag) in (await group_state(self.client, self.settings, owned, self.lag_offsets)).items():
            if p not in self.leases.owned:        # released while we asked: its series are gone, keep it so
                continue
            self.metrics.pending.labels(str(p)).set(pending)
            self.metrics.lag.labels(str(p)).set(lag)
