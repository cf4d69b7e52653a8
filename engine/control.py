"""Operator actions on a namespace: advance watermarks (flush), group state, reset (asyncio client)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from redis.exceptions import NoPermissionError, ResponseError

from .contract import AdvanceArgs, AlertRef
from .keys import INPUTS, OUTBOX, STATE, Keys, Partition
from .rules import RulesFile
from .scripts import Scripts, translate
from .settings import Settings

END_OF_TIME_US = 2**53             # the final flush's watermark: every session and minute closes


class Advanced(NamedTuple):
    closed: int           # sessions closed
    finalized: int        # minutes finalized
    watermark_us: int
    alerts: list[AlertRef]  # raised by closing sessions


async def advance(client: Any, scripts: Scripts, part: Partition, settings: Settings, target_us: int,
                  rules: bytes, consumer: str = "") -> Advanced:
    """Move partition's watermark to at least target_us and close what is due (running the
    session rules), in calls of at most close_per_call users and minutes each.  With ``consumer``,
    raises NotOwner when that consumer does not hold the partition's lease."""
    closed = finalized = 0
    alerts: list[AlertRef] = []
    while True:
        args = AdvanceArgs(consumer=consumer, target_us=target_us, gap_us=settings.session_gap_ms * 1000,
                           ttl_ms=settings.state_ttl_ms, maxlen=settings.output_maxlen,
                           limit=settings.close_per_call, now_us=time.time_ns() // 1000,
                           channel=Keys(settings.namespace, settings.partitions).channel(settings.alerts_channel),
                           profile_ttl_ms=settings.profile_ttl_ms, rules=rules)
        try:
            reply = await scripts.run("advance_watermark", part, args)
        except ResponseError as exc:
            raise translate(exc) from None
        closed += reply.sessions_closed
        finalized += reply.minutes_finalized
        alerts += reply.alerts
        if not reply.more:
            return Advanced(closed, finalized, reply.watermark_us, alerts)


class InputEnded(RuntimeError):
    """The namespace was flushed (end of input): its results are final, and more input would only be late."""


def refuse_if_flushed(client: Any, settings: Settings) -> None:
    """Raise InputEnded when a partition of the namespace was flushed (sync client: the producer's).
    A producer whose ACL role may only append (ops/redis/users.acl) cannot look: its input then goes
    to the late stream with the reason "input ended"."""
    keys = Keys(settings.namespace, settings.partitions)
    pipe = client.pipeline(transaction=False)
    for part in keys.all_partitions():
        pipe.hget(part.key(STATE), "wm")
    try:
        watermarks = pipe.execute()
    except NoPermissionError:
        return
    if any(wm is not None and int(wm) >= END_OF_TIME_US for wm in watermarks):
        raise InputEnded(f"namespace {settings.namespace!r} was flushed (end of input): its results are final and"
                         " new input would only go to the late stream. Run `shopstream reset` to start over,"
                         " or publish into another namespace (--namespace NAME).")


async def flush(client: Any, settings: Settings) -> tuple[int, int]:
    """End of input: the watermark of every partition goes to the end of time."""
    scripts = Scripts(client)
    rules = RulesFile(settings.rules_file).current()
    closed = finalized = 0
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        done = await advance(client, scripts, part, settings, END_OF_TIME_US, rules)
        closed += done.closed
        finalized += done.finalized
    return closed, finalized


async def ensure_groups(client: Any, settings: Settings) -> None:
    pipe = client.pipeline(transaction=False)
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        for stream in part.inputs:
            pipe.xgroup_create(stream, settings.group, id="0", mkstream=True)
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
            raise result


def _stream_state(groups, stream, group_name: bytes) -> tuple[int, int]:
    """(pending, lag) of one stream from XINFO GROUPS / XINFO STREAM replies (errors: no stream)."""
    if isinstance(stream, Exception):
        return 0, 0
    group = None if isinstance(groups, Exception) else next((g for g in groups if g["name"] == group_name), None)
    if group is None:
        return 0, stream["length"]
    lag = group.get("lag")
    if lag is None:                            # unknown after deletions: compare ids
        lag = 0 if group["last-delivered-id"] == stream["last-generated-id"] else 1
    return group["pending"], lag


async def group_state(client: Any, settings: Settings, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """partition -> (pending, lag) over its input streams (lag = entries not yet delivered;
    records waiting in the partition's outbox count as lag: they are input of other partitions)."""
    keys = Keys(settings.namespace, settings.partitions)
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        part = keys.partition(p)
        for stream in part.inputs:
            pipe.xinfo_groups(stream)
            pipe.xinfo_stream(stream)
        pipe.xlen(part.key(OUTBOX))
    replies = await pipe.execute(raise_on_error=False)
    group_name = settings.group.encode()
    per = 2 * len(INPUTS) + 1
    out = {}
    for i, p in enumerate(partitions):
        r = replies[i * per:(i + 1) * per]
        states = [_stream_state(r[2 * j], r[2 * j + 1], group_name) for j in range(len(INPUTS))]
        outbox = r[-1] if isinstance(r[-1], int) else 0
        out[p] = (sum(s[0] for s in states), sum(s[1] for s in states) + outbox)
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
