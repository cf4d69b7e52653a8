"""Stream positions as Delta Lake transaction versions (the format's idempotent-writer mechanism).

Every commit of the archiver carries, for each stream whose entries it holds, a Delta ``txn``
action ``(appId, version)``: appId names the consumer group and the stream, version encodes the
last entry id committed.  Delta keeps the latest version per appId in the table's snapshot
(deletes, compaction and vacuum keep it), so the position is committed atomically with the rows
and read back without scanning the history.

A Redis entry id ``<ms>-<seq>`` becomes ``ms << 20 | seq``: ordered like the ids, exact in a
signed 64-bit integer until the year 2248, for up to 1,048,576 entries in one millisecond (XADD
``*`` stays far below: Redis appends a few hundred thousand entries per second).
"""

from __future__ import annotations

from ..retention import parse_id

SEQ_BITS = 20
SEQ_LIMIT = 1 << SEQ_BITS


__all__ = ["parse_id", "app_id", "to_version", "from_version"]


def app_id(group: str, stream: str) -> str:
    return f"shopstream:{group}:{stream}"



def to_version(entry_id: str | bytes) -> int:
    ms, seq = parse_id(entry_id)
    if seq >= SEQ_LIMIT:
        raise ValueError(f"entry id {entry_id!r}: sequence {seq} does not fit the lake's position encoding")
    return ms << SEQ_BITS | seq


def from_version(version: int) -> str:
    return f"{version >> SEQ_BITS}-{version & (SEQ_LIMIT - 1)}"
