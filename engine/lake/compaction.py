"""`shopstream compact`: rewrite each day's small files into few large ones (Delta OPTIMIZE).

The archiver commits every few seconds, so a day of a table is thousands of small files; the
compaction bin-packs each ``dt`` partition into files of up to ``target_mb``.  It is an ordinary
Delta commit: readers keep seeing the same rows, the archiver's stream positions (txn actions)
are kept, and it does not conflict with concurrent appends.  The replaced files stay on disk
for ``retention_hours`` (24) so readers of a previous snapshot are not cut off; files older than
that which no commit references (an archiver killed mid-write) are removed too.
"""

from __future__ import annotations

from .store import Lake
from .tables import TABLES


def compact(lake: Lake, day: str | None = None, target_mb: int = 256,
            retention_hours: int = 24) -> dict[str, dict[str, int]]:
    """Compact every table (one day, or all days). Returns table -> files removed / added."""
    out = {}
    for table in TABLES:
        dt = lake.open(table)
        if dt is None:
            continue
        filters = [("dt", "=", day)] if day else None
        metrics = dt.optimize.compact(partition_filters=filters, target_size=target_mb * 1024 * 1024)
        # full: also the files of writers killed before their commit (orphans), past the retention
        dt.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True)
        if metrics["numFilesRemoved"]:
            out[table.name] = {"removed": metrics["numFilesRemoved"], "added": metrics["numFilesAdded"]}
    return out
