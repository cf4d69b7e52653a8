"""DuckDB over the lake, without copying: one view per table over its current Parquet files.

DuckDB's own Delta and Iceberg extensions are downloaded on first use, which an offline machine
cannot do; the view reads the exact file list of the table's current Delta snapshot instead
(``dt`` comes from the Hive-style path).  The views are a snapshot: reconnect to see new commits.

    import duckdb; from engine.lake.sql import connect
    con = connect("lake")                       # views: bronze_clicks, sessions, alerts, ...
    con.sql("SELECT count(*) FROM bronze_clicks").fetchall()
    con.sql("SELECT * FROM sessions").pl()      # polars; .df() pandas; .arrow() pyarrow
"""

from __future__ import annotations

import duckdb

from .store import Lake
from .tables import TABLES

DERIVED = ("dim_customer", "dim_product", "mart_daily", "erasures")     # tables not fed by a stream (views when present)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(lake: Lake | str, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    con = con or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    for table in TABLES:
        files = lake.files(table)
        if files:
            listing = ", ".join(_literal(f) for f in files)
            con.execute(f"CREATE OR REPLACE VIEW {table.name} AS SELECT * FROM read_parquet([{listing}], "
                        "hive_partitioning = true, hive_types = {'dt': DATE}, union_by_name = true)")
        else:
            empty = table.schema.empty_table()
            con.register(f"_empty_{table.name}", empty)
            con.execute(f"CREATE OR REPLACE VIEW {table.name} AS SELECT * FROM _empty_{table.name}")
    for name in DERIVED:
        files = lake.files(name)
        if files:
            listing = ", ".join(_literal(f) for f in files)
            hive = ", hive_partitioning = true, hive_types = {'dt': DATE}" if "/dt=" in files[0] else ""
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], "
                        f"union_by_name = true{hive})")
    return con
