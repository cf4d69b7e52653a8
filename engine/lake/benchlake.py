"""Lake measurements: archive throughput from real streams (``archive_throughput``, for
``shopstream bench`` to call after its engine run), and a synthetic lake of N click events
(written straight into bronze, no Redis) to time the SQL and the daily report at scale.

    python -m shopstream.engine.lake.benchlake --events 10000000 --lake /tmp/biglake
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..settings import Settings
from .archiver import Archiver
from .daily import compute
from .sql import connect
from .store import Lake
from .tables import BY_NAME

DAY_US = 86_400_000_000
T0 = 1_793_577_600_000_000            # 2026-11-02T00:00:00Z
TYPES = ["page_view", "product_view", "product_view", "product_view", "add_to_cart", "checkout", "purchase"]
DEVICES = ["web", "web", "ios", "android"]
COUNTRIES = ["US", "US", "US", "DE", "GB", "FR", "IN", "BR"]


def _pick(values: list[str], index: pa.Array) -> pa.Array:
    return pc.take(pa.array(values), pc.cast(index, pa.int64()))


def synthetic_clicks(start: int, count: int, users: int, total: int, stream_count: int = 16) -> pa.Table:
    """Rows ``start``..``start + count`` of ``total`` click rows spread over one day, shaped like the
    archiver's bronze_clicks rows."""
    table = BY_NAME["bronze_clicks"]
    i = pa.array(range(start, start + count), pa.int64())
    user = pc.cast(pc.bit_wise_and(pc.multiply(i, 2_654_435_761), (1 << 31) - 1), pa.int64())
    user = pc.remainder(user, users)
    ts = pc.add(T0, pc.multiply(i, DAY_US // total))
    user_id = pc.binary_join_element_wise("u", pc.cast(user, pa.string()), "")
    event_type = _pick(TYPES, pc.remainder(i, len(TYPES)))
    device = _pick(DEVICES, pc.bit_wise_and(user, 3))
    country = _pick(COUNTRIES, pc.bit_wise_and(pc.shift_right(user, 2), 7))
    product = pc.binary_join_element_wise("P", pc.cast(pc.bit_wise_and(i, 255), pa.string()), "")
    ts_text = pc.cast(pc.cast(ts, pa.timestamp("us", "UTC")), pa.string())
    raw = pc.binary_join_element_wise('{"user_id":"', user_id, '","event_type":"', event_type, '","timestamp":"',
                                      ts_text, '","device":"', device, '","country":"', country,
                                      '","product_id":"', product, '"}', "")
    partition = pc.cast(pc.bit_wise_and(user, stream_count - 1), pa.int32())
    columns = {
        "stream": pc.binary_join_element_wise("ss:{", pc.cast(partition, pa.string()), "}:clicks", ""),
        "entry_id": pc.binary_join_element_wise(pc.cast(pc.divide(ts, 1000), pa.string()), pc.cast(i, pa.string()),
                                                "-"),
        "entry_time": pc.cast(ts, pa.timestamp("us", "UTC")), "partition": partition, "user_id": user_id,
        "event_type": event_type, "event_id": pc.binary_join_element_wise("e", pc.cast(i, pa.string()), ""),
        "event_ts": pc.cast(ts, pa.timestamp("us", "UTC")), "session_id": pa.nulls(count, pa.string()),
        "device": device, "country": country, "product_id": product, "raw": raw,
        "dt": pc.cast(pc.cast(ts, pa.timestamp("us", "UTC")), pa.date32()),
    }
    return pa.table(columns, schema=table.schema)


def archive_throughput(client: Any, settings: Settings, lake_dir: str | Path) -> dict:
    """Archive whatever the namespace's streams hold (call it after the engine's bench run: input
    and outputs) into a fresh lake; rows/s, commit share and bytes per input event on disk."""
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = Lake(str(lake_dir))
    started = time.monotonic()
    done = Archiver(client, settings, lake, until_idle=True).run()
    seconds = time.monotonic() - started
    clicks = done.by_table.get("bronze_clicks", 0)
    size = sum(f.stat().st_size for f in Path(lake_dir, "bronze_clicks").rglob("*.parquet"))
    return {"rows": done.rows, "input_rows": sum(done.by_table.get(t, 0) for t in ("bronze_clicks", "bronze_tx",
                                                                                  "bronze_support")),
            "seconds": round(seconds, 3), "rows_per_s": round(done.rows / seconds) if seconds else 0,
            "commit_share": round(done.commit_seconds / seconds, 3) if seconds else 0,
            "bytes_per_click_event": round(size / clicks, 1) if clicks else None}


def build(lake: Lake, events: int, users: int = 500_000, chunk: int = 2_000_000) -> float:
    lake.ensure_tables()
    table = BY_NAME["bronze_clicks"]
    started = time.monotonic()
    for start in range(0, events, chunk):
        lake.append(table, synthetic_clicks(start, min(chunk, events - start), users, events), {}, "bench")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--lake", default="/tmp/shopstream-biglake")
    args = parser.parse_args()
    lake = Lake(args.lake)
    print(f"writing {args.events:,} click rows ... ", end="", flush=True)
    print(f"{build(lake, args.events):.1f} s")
    size = sum(f.stat().st_size for f in Path(args.lake, "bronze_clicks").rglob("*.parquet"))
    print(f"bronze_clicks: {size / args.events:.1f} bytes per event on disk")
    con = connect(lake)
    for sql in ("SELECT count(*) FROM bronze_clicks",
                "SELECT device, count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase') FROM bronze_clicks "
                "GROUP BY 1",
                "SELECT * FROM bronze_clicks WHERE user_id = 'u4242' ORDER BY event_ts"):
        started = time.monotonic()
        con.sql(sql).fetchall()
        print(f"{time.monotonic() - started:7.2f} s  {sql[:80]}")
    started = time.monotonic()
    compute(con, "2026-11-02")
    print(f"{time.monotonic() - started:7.2f} s  the daily report's queries (daily.compute) over the day")


if __name__ == "__main__":
    main()
