"""GDPR erasure in the lake: ``erase_from_lake(lake, user_id, request_id)``.

The same rules as the Redis side (engine/erase.py): a row *of* the user is deleted (input of
theirs, their sessions, late and dead-letter records, alerts about them); an alert about
another subject (an IP, a card) that lists the user in its evidence is re-written without them.
Then each table is vacuumed with no retention, so the files that held the user's rows are
removed from the folder, not only from the current snapshot; so are files that no commit
references (left by a writer killed mid-write) once older than ORPHAN_HOURS.

What keeps the id out of everything that stays:
* rows are deleted by their key (stream, entry id), never by a predicate on the user id: Delta
  logs a delete's predicate in plain text;
* the log keeps file statistics for ``entry_time`` only (tables.STATS_COLUMNS);
* the request is recorded in the ``erasures`` table with a SHA-256 of the id (as ``ss:audit``
  does in Redis), never the id.

Run it after the Redis erasure (which removes the entries still in the streams). The archiver
drops rows of erased subjects that it read before the erasure (it re-reads ``erasures`` before
each commit); running the erasure again is harmless and catches a commit that raced with it.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, write_deltalake

from ..erase import subject_hmac
from .store import CONFIG, Lake, read_file
from .tables import TABLES, Table

ERASURES = "erasures"
ERASURES_SCHEMA = pa.schema([("request_id", pa.string()), ("subject_hmac", pa.string()),
                             ("at", pa.timestamp("us", tz="UTC")), ("rows_deleted", pa.int64()),
                             ("rows_redacted", pa.int64())])
ERASED = "[erased]"
JSON_TEXT = ("raw", "payload", "evidence")     # columns holding a JSON document as text
ORPHAN_HOURS = 1       # files no commit references, older than this: left by a writer that died mid-write




def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _key_predicate(keys: list[tuple[str, str]]) -> str:
    """SQL predicate matching rows by (stream, entry_id) — no personal data in it."""
    by_stream: dict[str, list[str]] = {}
    for stream, entry_id in keys:
        by_stream.setdefault(stream, []).append(entry_id)
    return " OR ".join(f"(stream = {_quote(s)} AND entry_id IN ({', '.join(_quote(e) for e in ids)}))"
                       for s, ids in sorted(by_stream.items()))


def _scrub(value: Any, user_id: str) -> Any:
    """A JSON value without the user: list items that are the user (or ``<partition>:<user>``)
    dropped, strings equal to the user replaced."""
    if isinstance(value, dict):
        return {k: _scrub(v, user_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, user_id) for v in value
                if not (isinstance(v, str) and (v == user_id or v.endswith(":" + user_id)))]
    return ERASED if value == user_id else value


def _mentions(row: dict, user_id: str) -> bool:
    """The user is a value of the row, or a JSON string inside one of its JSON columns."""
    quoted = msgspec.json.encode(user_id).decode()
    return any(isinstance(v, str) and (v == user_id or quoted in v) for v in row.values())


def _marks(table: Table, data: pa.Table, user_id: str) -> tuple[pa.Array, pa.Array]:
    """(rows to delete, rows to redact) of one file."""
    names = data.schema.names
    false = pa.array([False] * data.num_rows)
    if "user_id" not in names:                        # the catalog, the minutes: nobody's data
        return false, false
    quoted = msgspec.json.encode(user_id).decode()
    mentioned = false
    for name in JSON_TEXT:
        if name in names:
            mentioned = pc.or_(mentioned, pc.fill_null(pc.match_substring(data[name], quoted), False))
    owned = pc.fill_null(pc.equal(data["user_id"], user_id), False)
    if table.name == "alerts":                        # about the user: delete; listing them: redact
        about_user = pc.fill_null(pc.equal(data["subject_kind"], "user"), True)
        delete = pc.and_(owned, about_user)
        return delete, pc.and_(pc.invert(delete), pc.or_(owned, mentioned))
    unowned = pc.is_null(data["user_id"])
    return pc.or_(owned, pc.and_(unowned, mentioned)), false      # e.g. an unparseable payload of theirs


def _redact(rows: list[dict], user_id: str) -> tuple[list[dict], list[dict]]:
    """(rewritten rows, rows that still mention the user after scrubbing: deleted instead)."""
    kept, dropped = [], []
    for row in rows:
        row = dict(row)
        if row.get("user_id") == user_id:
            row["user_id"] = ERASED
        if row.get("evidence"):
            try:
                row["evidence"] = msgspec.json.encode(_scrub(msgspec.json.decode(row["evidence"]), user_id)).decode()
            except msgspec.DecodeError:
                pass
        (dropped if _mentions(row, user_id) else kept).append(row)
    return kept, dropped


def erase_table(lake: Lake, table: Table, user_id: str, request_id: str) -> tuple[int, int]:
    """Delete / redact the user's rows of one table and vacuum it. Returns (deleted, redacted)."""
    dt = lake.open(table)
    if dt is None:
        return 0, 0
    doomed: list[tuple[str, str]] = []
    rewritten: list[dict] = []
    for uri in dt.file_uris():
        data = read_file(table, uri)
        delete, redact = _marks(table, data, user_id)
        doomed += zip(data.filter(delete)["stream"].to_pylist(), data.filter(delete)["entry_id"].to_pylist())
        kept, dropped = _redact(data.filter(redact).to_pylist(), user_id)
        rewritten += kept
        doomed += [(r["stream"], r["entry_id"]) for r in dropped]
    if not doomed and not rewritten:
        return 0, 0
    predicate = _key_predicate(doomed + [(r["stream"], r["entry_id"]) for r in rewritten])
    commit = CommitProperties(custom_metadata={"shopstream.erasure": request_id})
    if rewritten:         # one commit replaces every affected row: redacted copies in, the rest out
        write_deltalake(dt, pa.Table.from_pylist(rewritten, schema=table.schema), mode="overwrite",
                        predicate=predicate, partition_by=["dt"], commit_properties=commit)
    else:
        dt.delete(predicate, commit_properties=commit)
    dt = lake.open(table)
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, commit_properties=commit)
    return len(doomed), len(rewritten)


def erase_from_lake(lake: Lake | str, user_id: str, request_id: str, key: bytes) -> dict[str, Any]:
    """Remove ``user_id`` from every table of the lake, physically; record the request with only a
    keyed HMAC of the id (``key``: engine/erase.py audit_key, the same as Redis's audit stream).

    Idempotent: a second run finds nothing and records the request again."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    write_deltalake(lake.path(ERASURES),      # first: archivers drop the subject's rows from now on
                    pa.Table.from_pylist([{"request_id": request_id, "subject_hmac": subject_hmac(key, user_id),
                                           "at": time.time_ns() // 1000, "rows_deleted": None,
                                           "rows_redacted": None}], schema=ERASURES_SCHEMA),
                    mode="append", configuration=CONFIG, storage_options=lake.storage_options)
    report: dict[str, Any] = {"request_id": request_id, "tables": {}}
    deleted = redacted = 0
    for table in TABLES:
        d, r = erase_table(lake, table, user_id, request_id)
        if d or r:
            report["tables"][table.name] = {"deleted": d, "redacted": r}
        deleted, redacted = deleted + d, redacted + r
    _rebuild_dimensions(lake, request_id)
    report["orphans_removed"] = _remove_orphans(lake)
    write_deltalake(lake.path(ERASURES),
                    pa.Table.from_pylist([{"request_id": request_id, "subject_hmac": subject_hmac(key, user_id),
                                           "at": time.time_ns() // 1000, "rows_deleted": deleted,
                                           "rows_redacted": redacted}], schema=ERASURES_SCHEMA),
                    mode="append", configuration=CONFIG, storage_options=lake.storage_options)
    report.update(rows_deleted=deleted, rows_redacted=redacted)
    return report


def _rebuild_dimensions(lake: Lake, request_id: str) -> None:
    """The SCD2 dimensions, rebuilt from the erased bronze (one overwrite commit, no predicate),
    then vacuumed: the user's versions are gone with their files."""
    from .dimensions import DIMENSIONS, rebuild
    present = tuple(name for name in DIMENSIONS if lake.open(name) is not None)
    if present:
        rebuild(lake, present, request_id)
        for name in present:
            lake.open(name).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)


def _remove_orphans(lake: Lake) -> int:
    """Parquet files no commit references (a writer killed between writing a file and committing
    it) may hold the user's rows too: a full vacuum removes those older than ORPHAN_HOURS. Younger
    ones may belong to a commit in flight; they go with the next erasure or compaction."""
    from .dimensions import DIMENSIONS
    removed = 0
    for name in [t.name for t in TABLES] + list(DIMENSIONS):
        dt = lake.open(name)
        if dt is not None:
            removed += len(dt.vacuum(retention_hours=ORPHAN_HOURS, enforce_retention_duration=False, dry_run=False,
                                     full=True))
    return removed


def erased_subjects(lake: Lake) -> set[str]:
    """The HMAC of every erased user id (the archiver drops their rows)."""
    dt = lake.open(ERASURES)
    if dt is None:
        return set()
    import pyarrow.parquet as pq
    return {h for uri in dt.file_uris() for h in pq.read_table(uri, columns=["subject_hmac"])["subject_hmac"].to_pylist()}
