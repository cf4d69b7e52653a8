"""Product catalog: reference data the consumers join clicks with (category of a product).

Loading (``shopstream replay product_catalog.json``) writes each valid product to its hash
``<ns>:product:<id>`` (current state, for people and queries) and appends it to the
``<ns>:catalog`` stream, the changelog every consumer follows (like a compacted Kafka topic
behind a KTable): a consumer reads it from the start when it starts and then picks up updates
at every heartbeat.  A click's category is the catalog's; the click's own
``properties.category`` is used only for products the catalog does not know.  Bad product
records go to the dead-letter stream with the reason.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import msgspec

from .keys import Keys
from .schema import BadRecord, parse_product
from .settings import Settings
from .streams import pages

CATALOG_MAXLEN = 10_000_000


def load(client: Any, records: Iterable[bytes], settings: Settings) -> tuple[int, int]:
    """Upsert products (sync client). Returns (loaded, dead_lettered)."""
    keys = Keys(settings.namespace, settings.partitions)
    pipe = client.pipeline(transaction=False)
    loaded = dead = 0
    for raw in records:
        try:
            product = parse_product(raw)
        except Exception as exc:        # BadRecord, or e.g. RecursionError of a record nested too deeply
            reason = str(exc) if isinstance(exc, BadRecord) else f"invalid product: {type(exc).__name__}: {exc}"
            pipe.xadd(keys.dlq, {"payload": raw, "reason": reason, "stream": keys.catalog, "entry_id": "",
                                 "partition": -1, "at_ms": int(time.time() * 1000)},
                      maxlen=settings.output_maxlen, approximate=True)
            dead += 1
            continue
        fields = {k: ("" if v is None else str(v)) for k, v in msgspec.structs.asdict(product).items()}
        pipe.hset(keys.product(str(product.product_id)), mapping=fields)
        pipe.xadd(keys.catalog, {"e": raw}, maxlen=CATALOG_MAXLEN, approximate=True)
        loaded += 1
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    return loaded, dead


class Catalog:
    """A consumer's read-only cache: product_id -> category, followed from the changelog."""

    def __init__(self, settings: Settings):
        self.stream = Keys(settings.namespace, settings.partitions).catalog
        self.categories: dict[str, str] = {}
        self.last_id = b"0-0"

    async def refresh(self, client: Any) -> int:
        """Apply the updates appended since the last refresh; returns how many."""
        seen = 0
        async for page in pages(client, self.stream, after=self.last_id):
            for entry_id, fields in page:
                try:
                    product = parse_product(fields.get(b"e", b""))
                except BadRecord:        # validated when loaded; a hand-written entry is ignored
                    continue
                self.categories[str(product.product_id)] = product.category
            seen += len(page)
            self.last_id = page[-1][0]
        return seen

    def category(self, product_id: str) -> str | None:
        return self.categories.get(product_id)
