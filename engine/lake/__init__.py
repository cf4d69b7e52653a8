"""The cold path: Redis streams archived exactly once into a Delta Lake (Parquet) lake.

    commands.py   the `shopstream` sub-commands of the lake (argparse only until one runs)
    positions.py  stream entry id <-> the Delta transaction version that records it
    tables.py     the tables: schemas, partitioning, sort order, which stream feeds which table
    rows.py       stream entries -> table rows (lenient: bad input is archived as it came)
    store.py      the lake on disk / object storage: create, append with positions, files, vacuum
    archiver.py   `shopstream archive`: its own consumer group, commits sized by rows and time
    metrics.py    the archiver's Prometheus metrics (rows, commits, commit latency, lag, buffered)
    retention.py  `shopstream trim`: Redis retention by acknowledgement of every group
    sql.py        `shopstream sql`: DuckDB views over the tables' current Parquet files (no copy)
    erasure.py    erase_from_lake(): a user's rows out of every table, old files removed
    compaction.py `shopstream compact`: a day's small files rewritten into large ones
    daily.py      the daily BI report's numbers (DuckDB over the lake, one date)
    render.py     ... as Markdown and as a self-contained HTML page (inline SVG charts)
    dimensions.py `shopstream dims`: SCD2 dim_customer and dim_product rebuilt from bronze
    replay.py     `shopstream replay --from-lake --date D`: a day's raw input published again
    benchlake.py  measurements: a synthetic lake of N events, SQL and report timings
    demo.py       the demo's cold path: archive, dimensions, the busiest day's report
    lineage.py    OpenLineage run events of archive / compact / dims / report (JSONL file or HTTP)
    report.py     `shopstream report --date D`: writes both + JSON, says what changed since the last run

Nothing here is imported by the consumer: the lake's dependencies (the `lake` extra) stay out of
a consumer image.
"""
