"""The outbox forwarder: records the apply script left for other partitions (the IP and card
rules key on something other than the user) go to those partitions' ``rekey`` streams."""

from __future__ import annotations

from typing import Any

import msgspec

from shopstream.engine.keys import OUTBOX, REKEY, Partition
from shopstream.engine.partitioning import partition_of
from shopstream.engine.settings import Settings
from shopstream.engine.streams import pages

_records = msgspec.json.Decoder(list[list])
PAGE = 500
HOMES_KEPT = 200_000
_homes: dict[int, dict[str, int]] = {}


class Forwarder:
    def __init__(self, client: Any, settings: Settings, parts: list[Partition], cluster: bool):
        self.client, self.settings, self.parts, self.cluster = client, settings, parts, cluster

    async def forward(self, p: int, entries: list | None = None) -> int:
        """Send the records of partition p's outbox entries to the rekey stream of the partition of
        each record's key (its second field), then delete the entries: at-least-once, and what a
        record changes is idempotent (lua/includes/rules.lua).  Without ``entries``: whatever a
        previous owner left in the outbox."""
        outbox = self.parts[p].key(OUTBOX)
        if entries is not None:
            return await self._send(p, outbox, entries)
        moved = 0
        async for page in pages(self.client, outbox, count=PAGE):
            moved += await self._send(p, outbox, [(entry_id, fields[b"e"]) for entry_id, fields in page])
        return moved

    async def _send(self, p: int, outbox: str, batch: list) -> int:
        """Forward one batch of outbox entries (entry_id, records JSON), then delete them."""
        return await self.forward_round([(p, batch)])

    async def forward_round(self, due: list[tuple[int, list]]) -> int:
        """Forward the outbox entries of several partitions' calls (p, [(entry_id, records JSON)]) in
        one round trip: one XADD per target partition, then one XDEL per source outbox (a consumer
        forwards once per round, not once per call)."""
        by_target: dict[int, list] = {}
        parts = self.settings.partitions
        homes = _homes.setdefault(parts, {})
        if len(homes) > HOMES_KEPT:
            homes.clear()
        for _, batch in due:
            for _, payload in batch:
                for record in _records.decode(payload):
                    key = record[1]      # an IP, a card or a user: many repeat, so their partition is kept
                    q = homes.get(key) if key.__class__ is str else None
                    if q is None:
                        q = partition_of(str(key), parts)
                        if key.__class__ is str:
                            homes[key] = q
                    by_target.setdefault(q, []).append(record)
        pipe = self.client.pipeline(transaction=False)
        for q, records in sorted(by_target.items()):
            pipe.xadd(self.parts[q].key(REKEY), {"e": msgspec.json.encode(records)})   # trimmed once read
        if self.cluster:         # the targets live on other masters: delete only once they have it
            await pipe.execute()
            pipe = self.client.pipeline(transaction=False)
        for p, batch in due:
            pipe.xdel(self.parts[p].key(OUTBOX), *[entry_id for entry_id, _ in batch])
        await pipe.execute()
        return sum(len(batch) for _, batch in due)
