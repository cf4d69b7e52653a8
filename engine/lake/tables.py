"""The lake's tables: schema, partitioning, sort order, and the streams that feed each.

Every stream feeds exactly one table, so a table's commit carries the positions of all the
streams it holds (engine/lake/positions.py).  Every table is partitioned by ``dt`` (the event
date, UTC; the entry's date when the record has no readable event time) and sorted within a
commit by ``sort_by``.  File statistics in the Delta log are kept for ``entry_time`` only:
min/max of a personal column (a user id) would survive an erasure in the log's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ..keys import ALERTS, CLICKS, LATE, MINUTES, PROFILES, SESSIONS, SUPPORT, TX, Keys
from . import rows

TS = pa.timestamp("us", tz="UTC")
COMMON = [("stream", pa.string()), ("entry_id", pa.string()), ("entry_time", TS), ("partition", pa.int32())]
DT = ("dt", pa.date32())
STATS_COLUMNS = "entry_time"


@dataclass(frozen=True)
class Table:
    name: str
    layer: str                   # bronze (input as it came) | silver (the engine's outputs)
    source: str                  # per-partition stream suffix, or "catalog" / "dlq" (one stream)
    row: rows.RowFn
    columns: tuple[tuple[str, pa.DataType], ...]
    sort_by: tuple[str, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([*COMMON, *self.columns, DT])

    @property
    def per_partition(self) -> bool:
        return self.source not in ("catalog", "dlq")


S = pa.string()
I64 = pa.int64()
TABLES: tuple[Table, ...] = (
    Table("bronze_clicks", "bronze", CLICKS, rows.click,
          (("user_id", S), ("event_type", S), ("event_id", S), ("event_ts", TS), ("session_id", S),
           ("device", S), ("country", S), ("product_id", S), ("raw", S)), ("user_id", "event_ts")),
    Table("bronze_tx", "bronze", TX, rows.transaction,
          (("user_id", S), ("transaction_id", S), ("order_id", S), ("status", S), ("amount", S),
           ("amount_minor", I64), ("currency", S), ("payment_method", S), ("country", S), ("event_ts", TS), ("raw", S)),
          ("user_id", "event_ts")),
    Table("bronze_support", "bronze", SUPPORT, rows.ticket,
          (("user_id", S), ("ticket_id", S), ("status", S), ("category", S), ("channel", S), ("priority", S),
           ("event_ts", TS), ("raw", S)), ("user_id", "event_ts")),
    Table("bronze_catalog", "bronze", "catalog", rows.product,
          (("product_id", S), ("category", S), ("name", S), ("price", S), ("stock", S), ("event_ts", TS),
           ("raw", S)), ("product_id", "event_ts")),
    Table("sessions", "silver", SESSIONS, rows.session,
          (("user_id", S), ("session_id", S), ("start", TS), ("end", TS), ("event_count", I64), ("counts", S),
           ("categories", S)), ("user_id", "start")),
    Table("alerts", "silver", ALERTS, rows.alert,
          (("rule", S), ("severity", S), ("subject_kind", S), ("subject", S), ("user_id", S), ("window_start", TS),
           ("count", I64), ("threshold", I64), ("evidence", S), ("detected_at", TS), ("source_entry_id", S)),
          ("window_start", "rule")),
    Table("minutes", "silver", MINUTES, rows.minute,
          (("minute", TS), ("events", I64), ("unique_users", I64)), ("minute", "partition")),
    Table("late", "silver", LATE, rows.late,
          (("user_id", S), ("event_ts", TS), ("watermark", TS), ("reason", S), ("payload", S),
           ("source_entry_id", S)), ("user_id", "event_ts")),
    Table("dead_letters", "silver", "dlq", rows.dead_letter,
          (("user_id", S), ("reason", S), ("payload", S), ("source_stream", S), ("source_entry_id", S),
           ("at", TS)), ("at",)),
    Table("profile_changes", "silver", PROFILES, rows.profile_change,
          (("user_id", S), ("event_ts", TS), ("changes", S)), ("user_id", "event_ts", "entry_time")),
)
BY_NAME = {t.name: t for t in TABLES}


@dataclass(frozen=True)
class Source:
    stream: str
    table: Table
    partition: int | None

    @property
    def slot(self) -> str:
        """Streams of one slot group can be read in one command (same hash tag in a cluster)."""
        return self.stream if self.partition is None else f"{{{self.partition}}}"


def sources(keys: Keys, instance: int = 0, instances: int = 1) -> list[Source]:
    """The streams archiver ``instance`` of ``instances`` owns: partitions p with p % instances ==
    instance, and the two global streams (catalog, dead letters) for instance 0."""
    out = []
    for table in TABLES:
        if table.per_partition:
            out += [Source(part.key(table.source), table, part.p) for part in keys.all_partitions()
                    if part.p % instances == instance]
        elif instance == 0:
            out.append(Source(keys.catalog if table.source == "catalog" else keys.dlq, table, None))
    return out


def arrow_table(table: Table, records: list[rows.Row]) -> pa.Table:
    """Rows -> an Arrow table of the table's schema, sorted by dt then the table's sort key."""
    data = pa.Table.from_pylist(records, schema=table.schema)
    return data.sort_by([("dt", "ascending"), *((c, "ascending") for c in table.sort_by)])
