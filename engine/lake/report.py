"""`shopstream report --date D`: the daily BI report of one date from the lake.

Writes ``<out>/<date>/report.md``, ``report.html`` (self-contained) and ``report.json`` (the
numbers).  Idempotent: the same lake gives the same files; run again after late data arrived, it
rewrites them and says which numbers changed since the previous run of that date.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from . import daily, render
from .sql import connect
from .store import Lake


def write_report(lake: Lake | str, day: str, out_dir: str | Path = "out/report") -> dict:
    date.fromisoformat(day)                               # YYYY-MM-DD or ValueError
    folder = Path(out_dir) / day
    folder.mkdir(parents=True, exist_ok=True)
    data = daily.compute(connect(lake), day)
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
