"""Reading a batch: one consumer's owned partitions, every input stream of each merged in
append order.

A read takes up to batch_size entries of each stream.  When a stream has a backlog (its read came
back full), entries of the partition's other streams appended after its last one are not applied
yet: they are held (delivered to this consumer, pending) and merged into the next round, so a
partition's entries are applied in append order across its streams whatever the backlogs (a
payment is applied after the clicks published before it).  A partition that changes hands or
recovers reads its pending entries again, held ones included, in the same order.

On a single Redis, one XREADGROUP reads every owned partition and BLOCKs while all are empty.
On a Redis Cluster the partitions' streams hash to different slots (one multi-stream read would
be CROSSSLOT), so each partition is read on its own: the reads go out as one pipeline per master,
the masters in parallel, without BLOCK (a blocked partition would hold up the round); a round that
finds nothing pauses ``poll_ms`` (the latency cost: at most poll_ms for the first event after a
quiet spell, nothing under load, when rounds are not empty).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shopstream.engine.batch import _id_key, merge_sources
from shopstream.engine.keys import INPUTS, Partition
from shopstream.engine.settings import Settings

from .clock import Clock
from .leases import Leases
from .outbox import Forwarder


class Batch(NamedTuple):
    p: int
    entries: list          # (source, (entry_id, fields)) of every input stream, in id order
    from_pending: bool     # a read of our pending entries ("0"), not of new ones
    full: bool             # a stream gave batch_size entries: a backlog


def _streams(reply) -> list:
    """A raw XREADGROUP reply as (stream, entries) pairs: a map under RESP3, a list under RESP2."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else reply


class Reader:
    def __init__(self, client: Any, settings: Settings, name: str, parts: list[Partition], cluster: bool,
                 leases: Leases, forwarder: Forwarder, clock: Clock):
        self.settings, self.name, self.parts, self.cluster = settings, name, parts, cluster
        self.leases, self.forwarder, self.clock = leases, forwarder, clock
        self.stream_source = {stream.encode(): (part.p, source) for part in parts
                              for source, stream in zip(INPUTS, part.inputs)}
        # reads skip redis-py's per-entry dict building: entries stay [id, [field, value, ...]]; on a
        # single Redis through a second client sharing the pool; a RedisCluster has no pool to share
        # (one per node), so the consumer's own cluster client gets the raw XREADGROUP callback
        self.client = client if cluster else type(client)(connection_pool=client.connection_pool)
        self.client.set_response_callback("XREADGROUP", lambda response, **_: response)
        self.held: dict[int, dict[str, list]] = {}     # partition -> source -> entries held back

    def holds(self) -> bool:
        """Entries read but held back for the next round."""
        return any(self.held.values())

    async def read(self, owned: list[int]) -> list[Batch]:
        """Our pending entries of the partitions recovering, if any; else new entries of all."""
        for p in [p for p in self.held if p not in owned]:
            del self.held[p]                      # a new owner reads them from the pending list
        recovering = [p for p in owned if p in self.leases.recovering]
        if recovering:
            for p in recovering:
                self.held.pop(p, None)            # the pending read delivers them again
            for p in recovering:                  # records a previous owner left in the outbox
                await self.forwarder.forward(p)
            got = self._by_partition(await self.xreadgroup(recovering, "0"), True)
            # a partition with nothing pending any more is recovered
            seen = {b.p for b in got}
            for p in recovering:
                if p not in seen:
                    self.leases.recovered(p)
            return got
        return self._by_partition(await self.xreadgroup(owned, ">"), False)

    def _by_partition(self, reply, from_pending: bool) -> list[Batch]:
        grouped: dict[int, dict[str, list]] = {}
        full: dict[int, list] = {}                  # partition -> the last entry of each full stream
        for stream, entries in _streams(reply):
            p, source = self.stream_source[stream]
            grouped.setdefault(p, {})[source] = entries
            if len(entries) >= self.settings.batch_size:
                full.setdefault(p, []).append((source, entries[-1]))
        if not from_pending:
            for p, held in self.held.items():
                by_source = grouped.setdefault(p, {})
                for source, entries in held.items():
                    by_source[source] = entries + by_source.get(source, [])
            self.held = {}
        batches = []
        for p, by_source in grouped.items():
            merged = merge_sources(by_source)
            if p in full and len(by_source) > 1:
                # apply up to the earliest last entry of a full stream; hold what came after it (a
                # read of the pending list leaves it there: the next one reads it again)
                bound = min(_id_key((source, entry)) for source, entry in full[p])
                cut = next((i for i, item in enumerate(merged) if _id_key(item) > bound), len(merged))
                held: dict[str, list] = {}
                for source, entry in merged[cut:]:
                    held.setdefault(source, []).append(entry)
                if held and not from_pending:
                    self.held[p] = held
                merged = merged[:cut]
            batches.append(Batch(p, merged, from_pending, p in full))
        return batches

    async def xreadgroup(self, partitions: list[int], last_id: str) -> list:
        """(stream, entries) pairs of a read of the partitions' input streams from last_id ("0": our
        pending entries, ">": new ones; only a read of new ones waits when there is nothing)."""
        s = self.settings
        block = s.block_ms if last_id == ">" else None
        if not self.cluster:
            streams = {stream: last_id for p in partitions for stream in self.parts[p].inputs}
            return _streams(await self.client.xreadgroup(s.group, self.name, streams, count=s.batch_size,
                                                         block=block))
        # A partition's input streams share its slot: one XREADGROUP per partition. XREADGROUP's keys
        # are "movable": redis-py would ask a server (COMMAND GETKEYS, one more round trip) where each
        # read goes; the partition's slot says it directly.
        pipe = self.client.pipeline(transaction=False)
        for p in partitions:
            inputs = self.parts[p].inputs
            pipe.execute_command("XREADGROUP", "GROUP", s.group, self.name, "COUNT", s.batch_size, "STREAMS",
                                 *inputs, *[last_id] * len(inputs),
                                 target_nodes=self.client.get_node_from_key(inputs[0]))
        reply = [pair for one in await pipe.execute() for pair in _streams(one)]
        if not reply and block:
            await self.clock.sleep(s.poll_ms / 1000)
        return reply
