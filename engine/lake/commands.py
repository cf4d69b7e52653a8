"""The lake's sub-commands of ``shopstream`` (archive, sql, compact, report, dims) and the
``replay --from-lake`` path.  Importing this module costs only argparse: each command imports the
lake's libraries (the `lake` extra) when it runs, so the consumer's commands never load them.
"""

from __future__ import annotations

import logging
import signal
import sys

from ..connection import sync_client

log = logging.getLogger("shopstream")


def _need_url(settings) -> str:
    if not settings.redis_url:
        sys.exit("error: set REDIS_URL (or --redis-url) to the Redis this command should use")
    return settings.redis_url


def cmd_archive(args, settings):
    from .archiver import Archiver
    from .lineage import lineage, redis_namespace
    from .metrics import ArchiverMetrics
    from .store import Lake
    lake = Lake(args.lake or settings.lake_uri)
    metrics = ArchiverMetrics() if args.metrics_port is not None else None
    archiver = Archiver(sync_client(_need_url(settings)), settings, lake, instance=args.instance,
                        instances=args.instances, commit_rows=args.commit_rows, commit_seconds=args.commit_seconds,
                        read_count=args.read_count, until_idle=args.until_idle, metrics=metrics)
    if metrics:
        log.info("serving /metrics on port %d", metrics.serve(args.metrics_port))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: archiver.stop())
    log.info("archiver %s (group %s) -> %s: %d streams", archiver.name, archiver.group, lake.uri,
             len(archiver.sources))
    with lineage(lake, "archive") as run:
        done = archiver.run()
        run.inputs = [(redis_namespace(settings.redis_url), s) for s in sorted(done.by_stream)]
        run.outputs = [(lake.uri, t, n) for t, n in sorted(done.by_table.items())]
    print(f"archived {done.rows:,} rows in {done.commits:,} table commits to {lake.uri}"
          + (f" ({done.skipped:,} redelivered entries were already there)" if done.skipped else ""))


def cmd_sql(args, settings):
    import duckdb
    from .sql import connect
    from .store import Lake
    lake = Lake(args.lake or settings.lake_uri)
    if lake.open("bronze_clicks") is None:
        sys.exit(f"error: no lake at {lake.uri} (shopstream archive writes one; --lake or lake_uri to choose)")
    con = connect(lake)
    try:
        result = con.sql(args.query)
    except duckdb.Error as exc:
        sys.exit(f"error: {exc}")
    if result is None:
        return
    if args.csv:
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.fetchall())
    else:
        result.show(max_rows=args.max_rows, max_width=200)


def cmd_compact(args, settings):
    from .compaction import compact
    from .lineage import lineage
    from .store import Lake
    lake = Lake(args.lake or settings.lake_uri)
    with lineage(lake, "compact") as run:
        done = compact(lake, args.date, target_mb=args.target_mb)
        run.inputs = [(lake.uri, name) for name in done]
        run.outputs = [(lake.uri, name, None) for name in done]
    for name, counts in done.items():
        print(f"{name:<15} {counts['removed']:>6,} files -> {counts['added']:,}")
    if not done:
        print("nothing to compact")


def cmd_report(args, settings):
    from .lineage import lineage
    from .report import write_report
    from .store import Lake
    from .tables import TABLES
    lake = Lake(args.lake or settings.lake_uri)
    with lineage(lake, "report") as run:
        done = write_report(lake, args.date, args.out)
        run.inputs = [(lake.uri, t.name) for t in TABLES]
        run.outputs = [("file://", str(path.resolve()), None) for path in done["files"].values()]
    print(done["files"]["md"].read_text())
    print(f"\nopen {done['files']['html'].resolve()} (self-contained); numbers in {done['files']['json']}")


def cmd_dims(args, settings):
    from .dimensions import rebuild
    from .lineage import lineage
    from .store import Lake
    lake = Lake(args.lake or settings.lake_uri)
    with lineage(lake, "dims") as run:
        built = rebuild(lake)
        run.inputs = [(lake.uri, name) for name in ("bronze_clicks", "bronze_tx", "alerts", "bronze_catalog")]
        run.outputs = [(lake.uri, name, rows) for name, rows in built.items()]
    for name, rows in built.items():
        print(f"{name:<13} {rows:>8,} versions")


def replay_from_lake(args, settings, client):
    from .replay import replay_day
    if not args.date:
        sys.exit("error: --from-lake needs --date YYYY-MM-DD")
    for kind, sent in replay_day(args.lake or settings.lake_uri, client, settings, args.date).items():
        print(f"re-published {sent:,} {kind} records of {args.date} from the lake")


def add_commands(sub) -> None:
    p = sub.add_parser("archive", help="archive every input and output stream into the lake, exactly once")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri, lake/)")
    p.add_argument("--until-idle", action="store_true", help="exit once every stream is archived")
    p.add_argument("--instance", type=int, default=0, help="this archiver's number, 0..instances-1")
    p.add_argument("--instances", type=int, default=1, help="archivers sharing the streams (by partition)")
    p.add_argument("--commit-rows", type=int, default=50_000, help="commit after this many rows ...")
    p.add_argument("--commit-seconds", type=float, default=10.0, help="... or this long after the first one")
    p.add_argument("--read-count", type=int, default=1000, help="entries read per stream and round")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0 = any free port; default off)")
    p.set_defaults(fn=cmd_archive)
    p = sub.add_parser("sql", help="SQL (DuckDB) over the lake's tables, in place")
    p.add_argument("query")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri, lake/)")
    p.add_argument("--csv", action="store_true", help="CSV with a header instead of a table")
    p.add_argument("--max-rows", type=int, default=40)
    p.set_defaults(fn=cmd_sql)
    p = sub.add_parser("compact", help="rewrite the lake's small files into large ones, per day")
    p.add_argument("--date", help="only this day, YYYY-MM-DD (default: every day)")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri, lake/)")
    p.add_argument("--target-mb", type=int, default=256)
    p.set_defaults(fn=cmd_compact)
    p = sub.add_parser("report", help="the daily BI report of one date from the lake (Markdown + HTML)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    p.add_argument("--out", default="out/report", help="writes OUT/DATE/report.md, report.html, report.json")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri, lake/)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("dims", help="rebuild the SCD2 dimensions dim_customer and dim_product from the lake")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri, lake/)")
    p.set_defaults(fn=cmd_dims)
