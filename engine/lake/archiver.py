"""`shopstream archive`: every input and output stream, exactly once, into the lake.

The archiver reads with its own consumer group (``archive_group``) and keeps the rows it read
in memory until a commit is due (``commit_rows`` rows or ``commit_seconds`` since the first
one).  A commit writes, per table, one Delta commit holding the rows *and* the last entry id of
each stream they came from (engine/lake/positions.py); only then are the entries XACKed.

Restart after any crash: the positions are read from the lake; entries the group delivered but
never acknowledged (the dead process's pending list) are claimed first, in id order, and those
at or below the lake's position are acknowledged without being written again — they were
committed just before the crash.  So no entry is lost and none is written twice.

Several archivers: each owns a disjoint set of streams, fixed by ``--instance i --instances n``
(partition p belongs to instance p % n; the catalog and dead-letter streams to instance 0), the
way a StatefulSet's ordinal would.  Two processes given the same instance number would archive
the same entries twice: that is a deployment error, not a state the archiver recovers from.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from ..connection import consumer_name
from ..keys import Keys
from ..settings import Settings
from . import tables
from ..erase import audit_key_sync, subject_hmac
from .erasure import ERASURES, erased_subjects
from .positions import parse_id
from .metrics import ArchiverMetrics
from .store import Lake

log = logging.getLogger("shopstream.archive")
ACK_CHUNK = 1000


@dataclass
class Counters:
    rows: int = 0                  # rows committed by this process
    commits: int = 0               # table commits
    skipped: int = 0               # redelivered entries already in the lake, acknowledged only
    dropped: int = 0               # rows of erased users read before their erasure, not written
    commit_seconds: float = 0.0    # time spent committing (write + XACK)
    by_table: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_stream: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Archiver:
    def __init__(self, client: Any, settings: Settings, lake: Lake, *, name: str | None = None,
                 instance: int = 0, instances: int = 1, commit_rows: int = 50_000, commit_seconds: float = 10.0,
                 read_count: int = 1000, until_idle: bool = False, metrics: "ArchiverMetrics | None" = None,
                 lag_every: float = 5.0):
        if not 0 <= instance < instances:
            raise ValueError(f"instance {instance} is not one of 0..{instances - 1}")
        self.client, self.settings, self.lake = client, settings, lake
        self.audit_key: bytes | None = None          # read once some user was erased (engine/erase.py)
        self.group = settings.archive_group
        self.name = name or consumer_name()
        self.sources = tables.sources(Keys(settings.namespace, settings.partitions), instance, instances)
        self.by_stream = {s.stream: s for s in self.sources}
        self.commit_rows, self.commit_seconds = commit_rows, commit_seconds
        self.read_count, self.until_idle = read_count, until_idle
        self.metrics, self.lag_every, self._lag_at = metrics, lag_every, 0.0
        self.committed: dict[str, tuple[int, int]] = {}      # stream -> last entry id in the lake
        self.rows: dict[str, list[dict]] = defaultdict(list)   # table -> rows not yet committed
        self.ids: dict[str, list[bytes]] = defaultdict(list)   # stream -> entry ids not yet committed
        self.first_at: float | None = None
        self.buffered = 0
        self.counters = Counters()
        self._skipped: list[tuple[str, bytes]] = []      # redelivered entries already in the lake
        self.erased: set[str] = set()                          # SHA-256 of erased user ids
        self._erasures_version: int | None = None
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    # -- start: groups, tables, positions, what the previous process left pending -------------
    def start(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for source in self.sources:
            pipe.xgroup_create(source.stream, self.group, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self.lake.ensure_tables()
        self._refresh_erased()
        for table in tables.TABLES:
            streams = [s.stream for s in self.sources if s.table is table]
            for stream, position in self.lake.positions(table, streams, self.group).items():
                if position is not None:
                    self.committed[stream] = parse_id(position)
        for source in self.sources:
            self._claim_pending(source)
        self._ack_skipped()
        self._forget_dead_consumers()

    def _forget_dead_consumers(self) -> None:
        """Earlier processes' consumer names (nothing pending any more: it was claimed) leave the group."""
        pipe = self.client.pipeline(transaction=False)
        for source in self.sources:
            pipe.xinfo_consumers(source.stream, self.group)
        replies = pipe.execute(raise_on_error=False)
        pipe = self.client.pipeline(transaction=False)
        for source, consumers in zip(self.sources, replies):
            for consumer in [] if isinstance(consumers, Exception) else consumers:
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                if name != self.name and not consumer["pending"]:
                    pipe.xgroup_delconsumer(source.stream, self.group, name)
        pipe.execute(raise_on_error=False)

    def _claim_pending(self, source: tables.Source) -> None:
        cursor = "0-0"
        while True:
            reply = self.client.xautoclaim(source.stream, self.group, self.name, 0, start_id=cursor,
                                           count=self.read_count)
            cursor, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields:
                    self._accept(source, entry_id, fields)
                else:                                   # deleted while pending (an erasure)
                    self._skipped.append((source.stream, entry_id))
            if cursor in (b"0-0", "0-0"):
                return

    # -- reading ------------------------------------------------------------------------------
    def _accept(self, source: tables.Source, entry_id: bytes, fields: dict) -> None:
        eid = entry_id.decode()
        done = self.committed.get(source.stream)
        if done is not None and parse_id(eid) <= done:
            self._skipped.append((source.stream, entry_id))
            return
        self.rows[source.table.name].append(source.table.row(source.stream, source.partition, eid, fields))
        self.ids[source.stream].append(entry_id)
        self.buffered += 1
        if self.first_at is None:
            self.first_at = time.monotonic()

    def read_round(self) -> int:
        """One non-blocking XREADGROUP per slot group (cluster-safe); returns entries read."""
        groups: dict[str, list[str]] = defaultdict(list)
        for source in self.sources:
            groups[source.slot].append(source.stream)
        pipe = self.client.pipeline(transaction=False)
        for streams in groups.values():
            pipe.xreadgroup(self.group, self.name, {s: ">" for s in streams}, count=self.read_count)
        read = 0
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                raise RuntimeError(f"the {self.group} group was deleted under the archiver: {reply}")
            if isinstance(reply, Exception):
                raise reply
            for stream, entries in (reply.items() if isinstance(reply, dict) else reply or []):
                source = self.by_stream[stream.decode() if isinstance(stream, bytes) else stream]
                for entry_id, fields in entries:
                    self._accept(source, entry_id, fields)
                    read += 1
        self._ack_skipped()
        return read

    def _ack_skipped(self) -> None:
        if self._skipped and self.metrics:
            self.metrics.skipped.inc(len(self._skipped))
        if self._skipped:
            by_stream: dict[str, list[bytes]] = defaultdict(list)
            for stream, entry_id in self._skipped:
                by_stream[stream].append(entry_id)
            self._ack(by_stream)
            self.counters.skipped += len(self._skipped)
            self._skipped = []

    def _ack(self, ids: dict[str, list[bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for stream, entry_ids in ids.items():
            for i in range(0, len(entry_ids), ACK_CHUNK):
                pipe.xack(stream, self.group, *entry_ids[i:i + ACK_CHUNK])
        pipe.execute()

    # -- committing -----------------------------------------------------------------------------
    def due(self) -> bool:
        return self.buffered > 0 and (self.buffered >= self.commit_rows or
                                      time.monotonic() - (self.first_at or 0) >= self.commit_seconds)

    def commit(self) -> int:
        """Write every table's buffered rows with their streams' positions, then XACK them."""
        if not self.buffered:
            return 0
        began = time.monotonic()
        committed = 0
        self._refresh_erased()
        for table_name, records in list(self.rows.items()):
            table = tables.BY_NAME[table_name]
            records = self._without_erased(records)
            streams = [s.stream for s in self.sources if s.table is table and self.ids.get(s.stream)]
            positions = {s: self.ids[s][-1].decode() for s in streams}
            self.lake.append(table, tables.arrow_table(table, records), positions, self.group)
            self._ack({s: self.ids[s] for s in streams})       # only after the rows are in the lake
            for s in streams:
                self.committed[s] = parse_id(positions[s])
                self.counters.by_stream[s] += len(self.ids[s])
                del self.ids[s]
            del self.rows[table_name]
            committed += len(records)
            self.counters.commits += 1
            self.counters.by_table[table_name] += len(records)
            if self.metrics:
                self.metrics.rows.labels(table_name).inc(len(records))
                self.metrics.commits.labels(table_name).inc()
        self.counters.rows += committed
        self.counters.commit_seconds += time.monotonic() - began
        self.buffered, self.first_at = 0, None
        if self.metrics:
            self.metrics.commit_seconds.observe(time.monotonic() - began)
            self.metrics.last_commit.set_to_current_time()
            self.metrics.buffered.set(0)
        log.debug("committed %d rows", committed)
        return committed

    def _refresh_erased(self) -> None:
        """Re-read the erased subjects when the erasures table has a new version."""
        log_table = self.lake.open(ERASURES)
        version = None if log_table is None else log_table.version()
        if version != self._erasures_version:
            self.erased, self._erasures_version = erased_subjects(self.lake), version
            if self.erased and self.audit_key is None:
                self.audit_key = audit_key_sync(self.client, self.settings)

    def _without_erased(self, records: list[dict]) -> list[dict]:
        """Rows of users erased after the entry was read (it was in the stream then) are not written."""
        if not self.erased:
            return records
        hashes: dict[str, bool] = {}
        kept = []
        for row in records:
            user = row.get("user_id")
            if user is not None and hashes.setdefault(user, subject_hmac(self.audit_key, user) in self.erased):
                self.counters.dropped += 1
                if self.metrics:
                    self.metrics.dropped.inc()
                continue
            kept.append(row)
        return kept

    def lag(self) -> dict[str, int]:
        """Entries not yet delivered to the archive group, per table (XINFO GROUPS of every stream)."""
        pipe = self.client.pipeline(transaction=False)
        for source in self.sources:
            pipe.xinfo_groups(source.stream)
        out: dict[str, int] = defaultdict(int)
        for source, groups in zip(self.sources, pipe.execute(raise_on_error=False)):
            if isinstance(groups, Exception):
                continue
            group = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
            out[source.table.name] += (group or {}).get("lag") or 0
        return out

    def _observe(self) -> None:
        if not self.metrics:
            return
        self.metrics.buffered.set(self.buffered)
        if time.monotonic() - self._lag_at >= self.lag_every:
            self._lag_at = time.monotonic()
            for table, lag in self.lag().items():
                self.metrics.lag.labels(table).set(lag)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, idle_sleep: float = 0.1) -> Counters:
        self.start()
        while not self._stop:
            read = self.read_round()
            self._observe()
            if self.due():
                self.commit()
            if read == 0:
                if self.until_idle:
                    break
                time.sleep(idle_sleep)
        self.commit()
        return self.counters
