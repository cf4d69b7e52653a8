"""Retention: a stream loses only entries that every consumer group on it has acknowledged, and
only once they are older than ``input_retention_ms`` (asyncio client).  Input streams (clicks, tx,
support, rekey) and, once a group reads them (the archiver's, engine/lake), the output streams
(sessions, alerts, minutes, late, profiles) and the dead-letter stream; an output stream no group reads
is bounded by ``MAXLEN ~ output_maxlen`` only (a backstop well above any archiver lag).  With the
archiver deployed, ``archive_required`` keeps every stream whole until the archiver's group reads it.

A group has acknowledged every entry below its smallest pending id, or, with nothing pending,
below its last-delivered-id.  The floor of a stream is the least of those over *all* groups that
``XINFO GROUPS`` lists, so a group added later (an archiver, an audit reader) holds the stream
back as soon as it exists; a stream without any group is never trimmed.  Entry ids are append
times, so ``now - input_retention_ms`` is an id too: entries are kept at least that long for
replays, erasure and inspection, and the trim is ``XTRIM key MINID min(floor, horizon)``.

Both bounds only move forward (a group's last-delivered-id and smallest pending id only grow,
unless an operator moves a group back with ``XGROUP SETID``), so a floor read a moment before
the XTRIM is still safe when it runs.  Producers never trim input (engine/producer.py: a hard
cap raises BackPressure instead); consumers run this for the partitions they own, every few
heartbeats, and ``shopstream trim`` runs it for all.
"""

from __future__ import annotations

import time
from typing import Any

from .keys import ALERTS, INPUTS, LATE, MINUTES, PROFILES, SESSIONS, Keys

OUTPUTS = (SESSIONS, ALERTS, MINUTES, LATE, PROFILES)
from .settings import Settings


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


async def floors(client: Any, streams: list[str], required: str | None = None) -> dict[str, tuple[int, int]]:
    """stream -> the id below which every group on it has acknowledged every entry (streams with
    no group, without the ``required`` group, or missing, are left out: nothing of theirs may be
    trimmed)."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    found: dict[str, tuple[int, int]] = {}
    with_pending: list[tuple[str, bytes]] = []
    for stream, groups in zip(streams, await pipe.execute(raise_on_error=False)):
        if isinstance(groups, Exception) or not groups:
            continue
        if required and not any(g["name"] in (required, required.encode()) for g in groups):
            continue
        found[stream] = min(parse_id(g["last-delivered-id"]) for g in groups)
        with_pending += [(stream, g["name"]) for g in groups if g["pending"]]
    if with_pending:
        pipe = client.pipeline(transaction=False)
        for stream, group in with_pending:
            pipe.xpending(stream, group)
        for (stream, _), summary in zip(with_pending, await pipe.execute()):
            if summary["pending"] and summary["min"]:
                found[stream] = min(found[stream], parse_id(summary["min"]))
    return found


async def trim_streams(client: Any, settings: Settings, streams: list[str], now_ms: int | None = None) -> int:
    """Trim ``streams`` below what every group acknowledged and what is older than input_retention_ms
    (a stream with no group is left alone).  Returns how many entries were removed."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    horizon = (max(now_ms - settings.input_retention_ms, 0), 0)
    required = settings.archive_group if settings.archive_required else None
    targets = {stream: min(floor, horizon) for stream, floor in (await floors(client, streams, required)).items()}
    targets = {stream: target for stream, target in targets.items() if target > (0, 0)}
    if not targets:
        return 0
    pipe = client.pipeline(transaction=False)
    for stream, (ms, seq) in targets.items():
        pipe.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)
    return sum(await pipe.execute())


def partition_streams(settings: Settings, partitions: list[int]) -> list[str]:
    """The streams of ``partitions`` retention looks at: inputs and outputs."""
    keys = Keys(settings.namespace, settings.partitions)
    return [keys.partition(p).key(s) for p in partitions for s in (*INPUTS, *OUTPUTS)]


async def trim_inputs(client: Any, settings: Settings, partitions: list[int], now_ms: int | None = None) -> int:
    """Trim the streams of ``partitions`` (a consumer: the ones it owns)."""
    return await trim_streams(client, settings, partition_streams(settings, partitions), now_ms)


async def trim_all(client: Any, settings: Settings, now_ms: int | None = None) -> int:
    """Every partition's streams and the dead-letter stream (``shopstream trim``)."""
    streams = partition_streams(settings, list(range(settings.partitions)))
    return await trim_streams(client, settings, streams + [Keys(settings.namespace, settings.partitions).dlq], now_ms)
