"""`shopstream replay --from-lake --date D`: re-publish one day's raw input from the lake.

For a lost Redis, or to recompute a day under new rules: the catalog as it stood at the end of
the day (every version up to then, in order, so the consumers' join sees the same products),
then the day's clicks, transactions and support tickets — the ``raw`` payloads exactly as they
first arrived, bad ones included (they go to the dead letters again), each source in its
original stream order.  A user erased from the lake is not in it any more, so cannot come back.
"""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..keys import CLICKS, SUPPORT, TX
from ..producer import publish
from ..settings import Settings
from .sql import connect
from .store import Lake

CHUNK = 10_000
SOURCES = (("bronze_clicks", CLICKS), ("bronze_tx", TX), ("bronze_support", SUPPORT))


def replay_day(lake: Lake | str, client: Any, settings: Settings, day: str) -> dict[str, int]:
    con = connect(lake)
    done = {}
    products = [r.encode() for (r,) in con.execute(
        "SELECT raw FROM bronze_catalog WHERE dt <= ? ORDER BY entry_time, entry_id", [day]).fetchall()]
    if products:
        done["catalog"] = catalog.load(client, products, settings)[0]
    for table, source in SOURCES:
        # stream order: the entry id's time, then its sequence (entry ids compare as numbers, not text)
        result = con.execute(f"SELECT raw FROM {table} WHERE dt = ? ORDER BY entry_time, "
                             "CAST(split_part(entry_id, '-', 2) AS BIGINT), stream", [day])
        sent = 0
        while batch := result.fetchmany(CHUNK):
            sent += publish(client, [raw.encode() for (raw,) in batch], settings, source)
        done[source] = sent
    return done
