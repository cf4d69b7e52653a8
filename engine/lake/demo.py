"""The demo's cold path: after `shopstream demo` has run the sample through the engine, archive
every stream into a fresh lake, rebuild the SCD2 dimensions and write the busiest day's report.

    with redis_for_run(settings) as s:                     # engine/cli.py cmd_demo
        result = aio.run(run_file(...))
        cold = archive_and_report(s, Path(args.out))      # while the run's Redis is still up
    print(describe(cold))
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..connection import sync_client
from ..settings import Settings
from .archiver import Archiver
from .dimensions import rebuild
from .lineage import lineage
from .report import write_report
from .sql import connect
from .store import Lake


def archive_and_report(settings: Settings, out_dir: Path, client: Any = None) -> dict:
    """Archive into ``out_dir/lake`` (emptied first: a demo's Redis is new each run, its entry ids
    too), rebuild the dimensions, report the day with the most clicks into ``out_dir/report``."""
    lake_dir = out_dir / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = Lake(str(lake_dir))
    client = client or sync_client(settings.redis_url)
    started = time.monotonic()
    with lineage(lake, "archive") as run:
        done = Archiver(client, settings, lake, until_idle=True).run()
        run.outputs = [(lake.uri, t, n) for t, n in sorted(done.by_table.items())]
    archived = time.monotonic() - started
    dims = rebuild(lake)
    busiest = connect(lake).execute("SELECT CAST(dt AS VARCHAR) FROM bronze_clicks GROUP BY dt "
                                    "ORDER BY count(*) DESC, dt LIMIT 1").fetchall()
    report = write_report(lake, busiest[0][0], out_dir / "report") if busiest else None
    return {"lake": lake_dir, "rows": done.rows, "seconds": archived, "by_table": dict(done.by_table),
            "dimensions": dims, "report": report}


def describe(cold: dict) -> str:
    lines = [f"\nlake: {cold['rows']:,} rows archived in {cold['seconds']:.1f} s to {cold['lake']}/ "
             f"({', '.join(f'{t} {n:,}' for t, n in sorted(cold['by_table'].items()))}); "
             f"{cold['dimensions']['dim_customer']:,} customer versions (SCD2)",
             f"  query it: shopstream sql \"SELECT device, count(*) FROM bronze_clicks GROUP BY ALL\" --lake {cold['lake']}"]
    if cold["report"]:
        html = cold["report"]["files"]["html"].resolve()
        lines.append(f"daily report of {cold['report']['data']['date']}: {cold['report']['files']['md']}\n"
                     f"  open {html}")
    return "\n".join(lines)
