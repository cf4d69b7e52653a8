"""Drive the engine in-process: publish, run N consumers until drained, flush, collect outputs."""

from __future__ import annotations

import asyncio
import random

import msgspec

from shopstream.consumers.consumer import Consumer
from shopstream.engine import control, export
from shopstream.engine.eventtime import format_us
from shopstream.engine.producer import publish

GAP = 30 * 60 * 1_000_000
B = 5 * 60 * 1_000_000


def event(user: str, ts_us: int, etype: str = "page_view", **extra) -> bytes:
    return msgspec.json.encode({"user_id": user, "event_type": etype, "timestamp": format_us_us(ts_us), **extra})


def format_us_us(ts_us: int) -> str:
    """ISO with microseconds (the engine keeps µs; exports show ms)."""
    iso = format_us(ts_us)
    return f"{iso[:-1]}{ts_us % 1000:03d}Z"


async def consume_all(backend, settings, consumers: int = 1) -> None:
    workers = [Consumer(backend.aio, settings, f"c{i}", until_idle=True, idle_advance=False) for i in range(consumers)]
    await asyncio.wait_for(asyncio.gather(*(w.run() for w in workers)), timeout=120)


async def run_events(backend, settings, raws, consumers: int = 1, flush: bool = True) -> export.Outputs:
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, raws, settings)
    await consume_all(backend, settings, consumers)
    if flush:
        await control.flush(backend.aio, settings)
    return await export.collect(backend.aio, settings)


def generated_events(seed: int, users: int = 25, hours: float = 3.0, t0: int = 1_793_520_000_000_000):
    """(user, ts_us, type) with gaps around G, bursts over 100/min, exact-G and G+1µs gaps."""
    rng = random.Random(seed)
    out = []
    span = int(hours * 3600e6)
    for u in range(users):
        user = f"user-{u}" if u % 7 else f"{{weird}} :user\n{u} ü"
        ts = t0 + rng.randrange(span // 4)
        for _ in range(rng.randint(5, 60)):
            r = rng.random()
            if r < 0.05:
                ts += GAP                    # exactly G: same session
            elif r < 0.10:
                ts += GAP + 1                # G + 1 µs: new session
            elif r < 0.25:
                ts += rng.randint(GAP - 120_000_000, GAP + 120_000_000)
            else:
                ts += rng.randint(1, 180_000_000)
            out.append((user, ts, rng.choice(["page_view", "product_view", "add_to_cart", "purchase", "x-odd type"])))
        if u % 9 == 0:                       # a burst: more than 100 events in one minute
            base = (ts // 60_000_000 + 1) * 60_000_000
            for i in range(rng.randint(95, 240)):
                out.append((user, base + i * 200_000, "page_view"))
    return out


def shuffle_within(events, bound_us: int, seed: int):
    """Arrival order: each event delayed by up to bound_us (so never more than B behind the max)."""
    rng = random.Random(seed)
    keyed = sorted(((ts + rng.randrange(bound_us), i, (u, ts, t)) for i, (u, ts, t) in enumerate(events)))
    return [e for _, _, e in keyed]


def by_rule(alerts, rule: str = "events_per_minute") -> list[tuple[str, str]]:
    """(window_start, user_id) of one rule's alerts, sorted (as tests/reference.py returns them)."""
    return sorted((a["window_start"], a["user_id"]) for a in alerts if a["rule"] == rule)


# -- a driver for scripted runs: segments of input, watermark advances, redeliveries -------------

def click(user: str, ts_us: int, etype: str = "page_view", event_id: str | None = None, **extra) -> bytes:
    """A click's JSON; with event_id when given (a producer retry repeats it)."""
    if event_id is not None:
        extra["event_id"] = event_id
    return event(user, ts_us, etype, **extra)


async def advance_partition(backend, settings, p: int, target_us: int) -> None:
    """Move partition p's watermark up to target_us, as an idle advance does (no owner check)."""
    from shopstream.engine.keys import Keys
    from shopstream.engine.rules import RulesFile
    from shopstream.engine.scripts import Scripts
    await control.advance(backend.aio, Scripts(backend.aio), Keys(settings.namespace, settings.partitions).partition(p),
                          settings, target_us, RulesFile(settings.rules_file).current())


async def ghost_read(backend, settings, per_partition: int) -> int:
    """A consumer that reads up to per_partition new click entries of every partition and dies
    without applying them: they stay pending under its name until a new owner claims them."""
    from shopstream.engine.keys import Keys
    streams = {part.clicks: ">" for part in Keys(settings.namespace, settings.partitions).all_partitions()}
    reply = await backend.aio.xreadgroup(settings.group, "ghost", streams, count=per_partition)
    return sum(len(entries) for _, entries in (reply.items() if isinstance(reply, dict) else reply))


async def apply_every_batch_twice(backend, settings) -> None:
    """One consumer applies each batch it reads twice through the apply script (a redelivery of
    the same entries): the second call must change nothing (the XACK guard)."""
    worker = Consumer(backend.aio, settings, "twice", until_idle=True, idle_advance=False)
    try:
        for _ in range(1_000):
            await worker.leases.heartbeat()        # renew the leases: the apply checks them
            batches = await worker.read(sorted(worker.leases.owned))
            for p, entries, from_pending, full in batches:
                for _ in range(2 if entries else 0):
                    error = await worker.apply(p, entries)
                    assert error is None, f"apply failed: {error}"
                if from_pending and not full:          # as Consumer.step: recovered
                    worker.leases.recovered(p)
            if not any(entries for _, entries, _, _ in batches) and await control.drained(backend.aio, settings):
                return
        raise AssertionError("apply_every_batch_twice did not drain the input")
    finally:
        await worker.leases.leave()


async def drive(backend, settings, raws, *, advances=(), consumers: int = 1, mode: str = "consumers",
                ghost: int = 0, flush: bool = True) -> export.Outputs:
    """Publish raws in order and consume them; advances = (position, partition, target_us) happen
    once raws[:position] are applied.  mode "consumers": ``consumers`` Consumer processes (in this
    event loop); "twice": apply_every_batch_twice.  ghost > 0: before each segment is consumed, a
    dead consumer read that many entries of every partition (redelivered through XAUTOCLAIM)."""
    await control.ensure_groups(backend.aio, settings)
    cuts = sorted({pos for pos, _, _ in advances} | {len(raws)})
    start = 0
    for cut in cuts:
        if cut > start:
            publish(backend.sync, raws[start:cut], settings)
            if ghost:
                await ghost_read(backend, settings, ghost)
            if mode == "twice":
                await apply_every_batch_twice(backend, settings)
            else:
                await consume_all(backend, settings, consumers)
            start = cut
        for pos, p, target in advances:
            if pos == cut:
                await advance_partition(backend, settings, p, target)
    if flush:
        await control.flush(backend.aio, settings)
    return await export.collect(backend.aio, settings)
