"""Operator actions on a namespace: advance watermarks (flush), group state, reset (asyncio client)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .keys import Keys, Partition
from .scripts import Scripts, translate
from .settings import Settings

FLUSH_LIMIT = 1000                 # users / minutes closed per script call (keeps each call short)
END_OF_TIME_US = 2**53             # the final flush's watermark: every session and minute closes


async def advance(client: Any, scripts: Scripts, part: Partition, settings: Settings, target_us: int,
                  consumer: str = "") -> tuple[int, int, int]:
    """Move partition's watermark to at least target_us and close what is due.

    Returns (sessions_closed, minutes_finalized, watermark_us).  With ``consumer``, raises
    NotOwner when that consumer does not hold the partition's lease.
    """
    closed = finalized = 0
    while True:
        try:
            reply = await scripts.call(
                "advance_watermark", part.apply_keys(),
                [consumer, target_us, settings.session_gap_ms * 1000, settings.state_ttl_ms,
                 settings.output_maxlen, FLUSH_LIMIT])
        except ResponseError as exc:
            raise translate(exc) from None
        closed += reply[0]
        finalized += reply[1]
        if not reply[2]:
            return closed, finalized, int(reply[3])


async def flush(client: Any, settings: Settings) -> tuple[int, int]:
    """End of input: the watermark of every partition goes to the end of time."""
    scripts = Scripts(client)
    closed = finalized = 0
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        c, f, _ = await advance(client, scripts, part, settings, END_OF_TIME_US)
        closed += c
        finalized += f
    return closed, finalized


async def ensure_groups(client: Any, settings: Settings) -> None:
    pipe = client.pipeline(transaction=False)
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        pipe.xgroup_create(part.clicks, settings.group, id="0", mkstream=True)
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
            raise result


async def group_state(client: Any, settings: Settings, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """partition -> (pending, lag) of the consumer group (lag = entries not yet delivered)."""
    keys = Keys(settings.namespace, settings.partitions)
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.xinfo_groups(keys.partition(p).clicks)
        pipe.xinfo_stream(keys.partition(p).clicks)
    replies = await pipe.execute(raise_on_error=False)
    group_name = settings.group.encode()
    out = {}
    for i, p in enumerate(partitions):
        groups, stream = replies[2 * i], replies[2 * i + 1]
        if isinstance(stream, Exception):          # no stream yet: nothing to do
            out[p] = (0, 0)
            continue
        group = None if isinstance(groups, Exception) else next(
            (g for g in groups if g["name"] == group_name), None)
        if group is None:
            out[p] = (0, stream["length"])
            continue
        lag = group.get("lag")
        if lag is None:                            # unknown after deletions: compare ids
            lag = 0 if group["last-delivered-id"] == stream["last-generated-id"] else 1
        out[p] = (group["pending"], lag)
    return out


async def drained(client: Any, settings: Settings) -> bool:
    """True when every partition's entries were delivered and none is pending."""
    state = await group_state(client, settings, list(range(settings.partitions)))
    return all(pending == 0 and lag == 0 for pending, lag in state.values())


async def namespace_keys(client: Any, settings: Settings) -> list[bytes]:
    return [k async for k in client.scan_iter(match=Keys(settings.namespace, settings.partitions).pattern,
                                               count=1000)]


async def reset(client: Any, settings: Settings) -> int:
    """Delete every key of the namespace. Returns how many."""
    found = await namespace_keys(client, settings)
    for key in found:
        await client.unlink(key)
    return len(found)
