"""The one dead-letter writer: every record the consumer gives up on goes through ``write``.

Four paths end here, with one record shape (``payload, reason, stream, entry_id, partition,
at_ms`` in ``<ns>:dlq``): records that do not decode (engine/batch.py, trimmed entries included),
poison entries the apply script returned, and entries that still fail alone after their batch
failed ``max_deliveries`` times (``failed_apply``).  A dead letter is written first, then
acknowledged: at-least-once into the DLQ.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from shopstream.engine.batch import SOURCE_CODE, DeadLetter, payload_of
from shopstream.engine.contract import Poison
from shopstream.engine.keys import Keys
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.settings import Settings

from .clock import Clock

log = logging.getLogger("shopstream.consumer")
_SOURCES = {code.encode(): source for source, code in SOURCE_CODE.items()}


def record(d: DeadLetter, stream: str, partition: int, at_ms: int) -> dict:
    """The fields of one dead-letter entry (engine/export.py reads them back)."""
    return {"payload": d.payload, "reason": d.reason, "stream": stream, "entry_id": d.entry_id,
            "partition": partition, "at_ms": at_ms}


def from_poison(entries: list, poison: Sequence[Poison]) -> list[DeadLetter]:
    """The entries the apply script refused (reply.poison), with their payloads and reasons."""
    payloads = {(source, entry_id): fields for source, (entry_id, fields) in entries}
    dead = []
    for ref in poison:
        source = _SOURCES[ref.source]
        fields = payloads[(source, ref.entry_id)]
        dead.append(DeadLetter(ref.entry_id, payload_of(fields) or b"", ref.reason.decode(), source))
    return dead


def failed_apply(source: str, entry_id: bytes, fields: Any, max_deliveries: int, deliveries: int,
                 error: Exception) -> DeadLetter:
    """An entry whose apply failed max_deliveries times and fails alone too."""
    return DeadLetter(entry_id, (fields and payload_of(fields)) or b"",
                      f"apply failed {max_deliveries} times (delivered {deliveries} times): {error}", source)


class DeadLetterWriter:
    def __init__(self, client: Any, settings: Settings, keys: Keys, metrics: ConsumerMetrics, clock: Clock,
                 cluster: bool):
        self.client, self.settings, self.keys, self.metrics = client, settings, keys, metrics
        self.clock, self.cluster = clock, cluster

    async def write(self, p: int, dead: list[DeadLetter]) -> None:
        """Bad records of partition p: to the dead-letter stream first, then acknowledged.
        On a cluster the DLQ and the partition live on different masters and one pipeline would
        send to both at once (the XACK could land first): there, two round trips."""
        s, part = self.settings, self.keys.partition(p)
        at_ms = self.clock.wall_us() // 1000
        pipe = self.client.pipeline(transaction=False)
        for d in dead:
            pipe.xadd(self.keys.dlq, record(d, part.key(d.source), p, at_ms), maxlen=s.output_maxlen, approximate=True)
        if self.cluster:
            await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
        for source in {d.source for d in dead}:
            pipe.xack(part.key(source), s.group, *[d.entry_id for d in dead if d.source == source])
        await pipe.execute()
        self.metrics.events.labels("dead_letter").inc(len(dead))
        for d in dead:
            log.info("dead-letter partition=%d entry=%s reason=%s", p, d.entry_id.decode(), d.reason)
