"""Operator actions on a namespace: advance watermarks (flush), group state, reset (asyncio client)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from redis.exceptions import NoPermissionError, ResponseError

from .contract import AdvanceArgs, AlertRef
from .keys import INPUTS, OUTBOX, STATE, Keys, Partition
from .retention import parse_id
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


def _stream_state(groups, stream, group_name: bytes, offsets: dict | None = None,
                  key: str = "") -> tuple[int, int]:
    """(pending, lag) of one stream from XINFO GROUPS / XINFO STREAM replies (errors: no stream).

    Caught up is decided from ids, never from the group's ``lag``: after a Redis restart whose
    AOF began with a rewrite (an RDB preamble), ``entries-read`` comes back as it was at the
    rewrite while ``last-delivered-id`` is current, so ``lag`` stays above 0 on a fully read
    stream, for good (tests/test_crash.py).  The group has read everything when its
    last-delivered-id is at or past the stream's last *existing* entry (not last-generated-id:
    the last entries may have been deleted).  Behind, ``lag`` is used when it is plausible
    (0 < lag <= length), else estimated from the ids' times (see _estimate_lag).

    ``offsets`` (stream -> the lag Redis reported while the group was caught up), kept by a
    caller across calls, corrects that stale ``lag`` while behind: later reads add to the stale
    counter, so the error stays constant until the next restart."""
    if isinstance(stream, Exception):
        return 0, 0
    group = None if isinstance(groups, Exception) else next((g for g in groups if g["name"] == group_name), None)
    if group is None:
        return 0, stream["length"]
    last = stream.get("last-entry")
    delivered = parse_id(group["last-delivered-id"])
    lag, length = group.get("lag"), stream["length"]
    if not last or delivered >= parse_id(last[0]):
        if offsets is not None:
            if lag:
                offsets[key] = lag
            else:
                offsets.pop(key, None)
        return group["pending"], 0
    if lag is not None and offsets:
        lag -= offsets.get(key, 0)
    if lag is None or not 0 < lag <= length:
        lag = _estimate_lag(delivered, stream)
    return group["pending"], lag


def _estimate_lag(delivered: tuple[int, int], stream: dict) -> int:
    """Entries after ``delivered``, assuming the retained entries were appended at an even rate
    between the first and the last one (ids carry their append time): all of them when the group
    is before the first, at least 1 (the caller knows the group is behind)."""
    length = stream["length"]
    first, last = parse_id(stream["first-entry"][0]), parse_id(stream["last-entry"][0])
    if delivered < first:
        return length
    span = last[0] - first[0]
    share = (last[0] - delivered[0]) / span if span else 0.5
    return min(length, max(1, round(length * share)))


async def group_state(client: Any, settings: Settings, partitions: list[int],
                      offsets: dict | None = None) -> dict[int, tuple[int, int]]:
    """partition -> (pending, lag) over its input streams (lag = entries not yet delivered;
    records waiting in the partition's outbox count as lag: they are input of other partitions).
    ``offsets``: see _stream_state (a consumer keeps one across heartbeats)."""
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
        inputs = keys.partition(p).inputs
        states = [_stream_state(r[2 * j], r[2 * j + 1], group_name, offsets, inputs[j]) for j in range(len(INPUTS))]
        outbox = r[-1] if isinstance(r[-1], int) else 0
        out[p] = (sum(s[0] for s in states), sum(s[1] for s in states) + outbox)
    return out


async def drained(client: Any, settings: Settings) -> bool:
    """True when every partition's entries were delivered (by ids) and none is pending."""
    state = await group_state(client, settings, list(range(settings.partitions)))
    return all(pending == 0 and lag == 0 for pending, lag in state.values())


INPUT_OPEN, INPUT_DONE = b"open", b"done"


def set_input_state(client: Any, settings: Settings, state: bytes) -> None:
    """The end-of-input signal of a bounded run (sync client: the producer's): INPUT_OPEN before the
    first event is appended, INPUT_DONE after the last.  Consumers run while the input is replayed;
    ``consume --until-idle`` exits on a drained stream only once it is not open (no key: as before,
    a stream replayed before the consumers start)."""
    client.set(Keys(settings.namespace, settings.partitions).input_state, state)


async def input_open(client: Any, settings: Settings) -> bool:
    """True while a producer said more input is coming (set_input_state)."""
    return await client.get(Keys(settings.namespace, settings.partitions).input_state) == INPUT_OPEN


async def namespace_keys(client: Any, settings: Settings) -> list[bytes]:
    return [k async for k in client.scan_iter(match=Keys(settings.namespace, settings.partitions).pattern,
                                               count=1000)]


async def reset(client: Any, settings: Settings) -> int:
    """Delete every key of the namespace. Returns how many."""
    found = await namespace_keys(client, settings)
    for key in found:
        await client.unlink(key)
    return len(found)
