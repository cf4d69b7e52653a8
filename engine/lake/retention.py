"""`shopstream trim`: Redis retention that removes only what every consumer group acknowledged.

For each input stream (clicks, tx, support) and output stream (sessions, alerts, minutes, late,
dead letters), the entries every group has been delivered and acknowledged — the engine's group
and the archiver's on the inputs, the archiver's on the outputs — are trimmed (``XTRIM MINID``):
below the oldest entry still pending in any group, and at most up to the oldest group's last
delivered entry.  A stream without the archive group (the archiver has not started on it yet)
is left alone; so is the catalog changelog (the
consumers rebuild their product cache from it).  Run it periodically, with ``input_maxlen`` /
``output_maxlen`` as a safety cap set well above what the archiver's lag can reach.
"""

from __future__ import annotations

from typing import Any

from ..keys import ALERTS, CLICKS, LATE, MINUTES, SESSIONS, SUPPORT, TX, Keys
from ..settings import Settings
from .positions import parse_id

PER_PARTITION = (CLICKS, TX, SUPPORT, SESSIONS, ALERTS, MINUTES, LATE)


def streams(settings: Settings) -> list[str]:
    keys = Keys(settings.namespace, settings.partitions)
    return [part.key(s) for part in keys.all_partitions() for s in PER_PARTITION] + [keys.dlq]


def _id(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def safe_min_id(client: Any, stream: str, required: tuple[str, ...] = ()) -> str | None:
    """The smallest entry id that must stay (everything below it is acknowledged by every group),
    or None when the stream has no group, or lacks one of the ``required`` groups."""
    groups = client.xinfo_groups(stream)
    names = {_id(g["name"]) for g in groups}
    if not groups or not set(required) <= names:
        return None
    bounds = []
    for group in groups:
        if group["pending"]:
            oldest_pending = client.xpending(stream, group["name"])["min"]
            bounds.append(parse_id(_id(oldest_pending)))
        else:
            ms, seq = parse_id(_id(group["last-delivered-id"]))
            bounds.append((ms, seq + 1))                   # up to and including the last delivered
    ms, seq = min(bounds)
    return f"{ms}-{seq}"


def trim_acknowledged(client: Any, settings: Settings) -> dict[str, int]:
    """Trim every archived stream to what all its groups acknowledged; returns entries removed per stream."""
    removed = {}
    for stream in streams(settings):
        if not client.exists(stream):
            continue
        minid = safe_min_id(client, stream, (settings.archive_group,))
        if minid is not None:
            n = client.xtrim(stream, minid=minid, approximate=False)
            if n:
                removed[stream] = n
    return removed
