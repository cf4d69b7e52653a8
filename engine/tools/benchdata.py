"""Synthetic clickstream for the benchmark (pure, seeded, fast).

Users browse in sessions (gaps of seconds inside, hours between), a few bots burst well over
100 events a minute, and 2 % of events arrive out of order within the 5-minute bound.
Returns the events already encoded as JSON, in arrival order.
"""

from __future__ import annotations

import random
import zlib

import msgspec

from ..eventtime import format_us

TYPES = ("page_view", "product_view", "product_view", "product_view", "add_to_cart", "checkout", "purchase")
T0 = 1_793_520_000_000_000          # 2026-11-01T06:40:00Z


class BenchEvent(msgspec.Struct, array_like=False):
    event_id: str
    user_id: str
    event_type: str
    timestamp: str
    device: str
    page_url: str
    ip: str
    country: str


def generate(events: int, users: int = 20_000, seed: int = 1, hours: float = 6.0,
             bots: int = 20, out_of_order: float = 0.02, bound_us: int = 300_000_000) -> list[bytes]:
    rng = random.Random(seed)
    span = int(hours * 3600e6)
    per_user = max(1, (events - bots * 600) // users)
    stamped: list[tuple[int, str, str]] = []
    for u in range(users):
        user = f"user{u:06d}"
        ts = T0 + rng.randrange(span // 2)
        for i in range(per_user):
            ts += rng.randrange(2_000_000, 60_000_000) if rng.random() > 0.08 else rng.randrange(1_900_000_000, 7_200_000_000)
            stamped.append((ts, user, TYPES[rng.randrange(len(TYPES))]))
    for b in range(bots):                                   # bursts of 120-200 events in one minute
        user = f"bot{b:03d}"
        for _ in range(3):
            base = T0 + rng.randrange(span)
            for i in range(rng.randint(120, 200)):
                stamped.append((base + i * 300_000, user, "product_view"))
    while len(stamped) < events:                            # top up with single visits
        stamped.append((T0 + rng.randrange(span), f"user{rng.randrange(users):06d}", "page_view"))
    stamped = stamped[:events]
    keyed = [(ts + (rng.randrange(bound_us) if rng.random() < out_of_order else 0), ts, user, etype)
             for ts, user, etype in stamped]
    keyed.sort()
    enc = msgspec.json.Encoder()
    out = []
    for n, (_, ts, user, etype) in enumerate(keyed):
        h = zlib.crc32(user.encode())          # one address per user, as in real traffic
        out.append(enc.encode(BenchEvent(f"e{n}", user, etype, format_us(ts), "web", "https://shop.example/p/1",
                                         f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}", "US")))
    return out
