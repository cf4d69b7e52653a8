"""`shopstream report --date D`: the daily BI report of one date from the lake.

Writes ``<out>/<date>/report.md``, ``report.html`` (self-contained) and ``report.json`` (the
numbers), and the day's row of the gold table ``mart_daily`` in the lake.  Idempotent: the same lake gives the same files; run again after late data arrived, it
rewrites them and says which numbers changed since the previous run of that date.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from . import daily, render
from .sql import connect
from .store import CONFIG, Lake

MART = "mart_daily"
MART_SCHEMA = pa.schema([("dt", pa.date32()), ("events", pa.int64()), ("users", pa.int64()), ("sessions", pa.int64()),
                         ("avg_session_minutes", pa.float64()), ("currency", pa.string()), ("orders", pa.int64()),
                         ("revenue", pa.string()),
                         ("average_order_value", pa.string()), ("failed_payment_rate", pa.float64()),
                         ("alerts", pa.int64()), ("tickets", pa.int64()), ("dead_letters", pa.int64()),
                         ("late", pa.int64())])


def write_mart(lake: Lake, data: dict) -> None:
    """The day's headline numbers as one row of the gold table ``mart_daily`` (replaced on re-run)."""
    t, s = data["traffic"], data["sales"]
    row = {"dt": date.fromisoformat(data["date"]), "events": t["events"], "users": t["users"],
           "sessions": t["sessions"], "avg_session_minutes": float(t["avg_session_minutes"]),
           "currency": s["currency"], "orders": s["orders"],
           "revenue": s["revenue"], "average_order_value": s["average_order_value"],
           "failed_payment_rate": float(s["failed_payment_rate"]), "alerts": data["fraud"]["alerts"],
           "tickets": data["support"]["tickets"], "dead_letters": sum(n for _, n in data["quality"]["dead_letters"]),
           "late": sum(n for _, n in data["quality"]["late"])}
    write_deltalake(lake.path(MART), pa.Table.from_pylist([row], schema=MART_SCHEMA), mode="overwrite",
                    predicate=f"dt = '{data['date']}'" if lake.open(MART) is not None else None,
                    partition_by=["dt"], configuration=CONFIG, storage_options=lake.storage_options)


def write_report(lake: Lake | str, day: str, out_dir: str | Path = "out/report") -> dict:
    date.fromisoformat(day)                               # YYYY-MM-DD or ValueError
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    folder = Path(out_dir) / day
    folder.mkdir(parents=True, exist_ok=True)
    data = daily.compute(connect(lake), day)
    write_mart(lake, data)
    previous_file = folder / "report.json"
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else None
    changes = None if previous is None else daily.changes(previous, data)
    files = {"md": folder / "report.md", "html": folder / "report.html", "json": previous_file}
    for kind, text in (("md", render.markdown(data, changes)), ("html", render.html(data, changes)),
                       ("json", json.dumps(data, indent=1, sort_keys=True))):
        tmp = files[kind].with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, files[kind])                     # a reader never sees half a file
    return {"data": data, "changes": changes, "files": files}
