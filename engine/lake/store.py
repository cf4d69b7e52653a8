"""The lake: one Delta table per entry of tables.TABLES under one root (a folder, or an object
store URI with its credentials from the environment, as delta-rs reads them).

Writes go through delta-rs; reads of data go through pyarrow on the table's current file list
(DeltaTable.file_uris), never DeltaTable.to_pyarrow_dataset: with pyarrow 26 that path makes the
interpreter abort at exit.
"""

from __future__ import annotations

import os
from typing import Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError

from .positions import app_id, from_version, to_version
from .tables import BY_NAME, STATS_COLUMNS, TABLES, Table

CONFIG = {"delta.dataSkippingStatsColumns": STATS_COLUMNS}
WRITER = WriterProperties(compression="ZSTD", compression_level=3)   # ~40 % smaller than snappy, as fast to read


class Lake:
    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None):
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)
        self.storage_options = dict(storage_options or {}) or None

    def exists(self) -> bool:
        """Does the lake hold any table?  (A remote lake is assumed to: its tables say otherwise.)"""
        if "://" in self.uri:
            return True
        return os.path.isdir(self.uri) and any(os.path.isdir(os.path.join(self.uri, t.name, "_delta_log"))
                                               for t in TABLES)

    def path(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.uri}/{name}"

    # -- tables -----------------------------------------------------------------------------
    def ensure_tables(self, tables: tuple[Table, ...] = TABLES) -> None:
        for table in tables:
            try:
                DeltaTable.create(self.path(table), schema=table.schema, partition_by=["dt"], mode="ignore",
                                  configuration=CONFIG, storage_options=self.storage_options)
            except Exception as exc:               # another archiver created it at the same moment
                if "already exists" not in str(exc).lower():
                    raise

    def open(self, table: Table | str) -> DeltaTable | None:
        try:
            return DeltaTable(self.path(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    # -- writes -----------------------------------------------------------------------------
    def append(self, table: Table, data: pa.Table, positions: Mapping[str, str], group: str) -> None:
        """Append ``data`` and, in the same commit, each stream's last archived entry id."""
        txns = [Transaction(app_id(group, stream), to_version(entry_id)) for stream, entry_id in positions.items()]
        write_deltalake(self.path(table), data, mode="append", partition_by=["dt"], configuration=CONFIG,
                        storage_options=self.storage_options, writer_properties=WRITER,
                        commit_properties=CommitProperties(app_transactions=txns,
                                                           custom_metadata={"shopstream.writer": group}))

    # -- reads ------------------------------------------------------------------------------
    def position(self, table: Table, stream: str, group: str) -> str | None:
        """The last entry id of ``stream`` committed to ``table`` by ``group`` (None: nothing yet)."""
        return self.positions(table, [stream], group)[stream]

    def positions(self, table: Table, streams: list[str], group: str) -> dict[str, str | None]:
        dt = self.open(table)
        versions = {s: None if dt is None else dt.transaction_version(app_id(group, s)) for s in streams}
        return {s: None if v is None else from_version(v) for s, v in versions.items()}

    def files(self, table: Table | str) -> list[str]:
        """The table's current data files (the snapshot a reader should see)."""
        dt = self.open(table)
        return [] if dt is None else dt.file_uris()

    def read(self, table: Table | str) -> pa.Table:
        """The table's current rows (dt included), for tests and small tables."""
        spec = BY_NAME[table] if isinstance(table, str) else table
        dt = self.open(spec)
        if dt is None:
            return spec.schema.empty_table()
        parts = [read_file(spec, uri) for uri in dt.file_uris()]
        return pa.concat_tables(parts).cast(spec.schema) if parts else spec.schema.empty_table()


def day_of(uri: str) -> str:
    """The ``dt`` partition value of a data file, from its path (``…/dt=2026-11-02/part-….parquet``)."""
    return next(p[3:] for p in reversed(uri.split("/")) if p.startswith("dt="))


def read_file(table: Table, uri: str) -> pa.Table:
    """One data file's rows with its ``dt`` (a partition value: in the path, not in the file)."""
    data = pq.read_table(uri)
    day = pa.array([day_of(uri)] * data.num_rows).cast(pa.date32())
    return data.append_column("dt", day).select(table.schema.names).cast(table.schema)
