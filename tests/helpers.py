"""Drive the engine in-process: publish, run N consumers until drained, flush, collect outputs."""

from __future__ import annotations

import asyncio
import random

import msgspec

from consumers.consumer import Consumer
from engine import control, export
from engine.eventtime import format_us
from engine.producer import publish

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
