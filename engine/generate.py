"""Seeded generator of the four sample files the brief promised (DESIGN §2).

clickstream_events.json (JSON Lines, in *arrival* order): browse -> product -> cart -> checkout
-> purchase funnels, diurnal load, web/ios/android, a few bots far above 100 events a minute,
~2 % of events delivered out of order within the 5-minute bound, ~0.2 % delivered late (after
the session gap), ~0.3 % malformed records, timestamps as ISO ``Z``, ISO with an offset, and
epoch milliseconds, unknown event types.  transactions.csv, product_catalog.json and
customer_support_interactions.json follow the same users and purchases.
"""

from __future__ import annotations

import csv
import math
import random
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from .eventtime import format_us, parse_timestamp

CATEGORIES = ["electronics", "books", "fashion", "home", "toys", "sports", "beauty", "grocery"]
DEVICES = [("web", 0.5), ("ios", 0.3), ("android", 0.2)]
COUNTRIES = [("US", 0.45), ("GB", 0.15), ("DE", 0.15), ("FR", 0.1), ("IN", 0.1), ("BR", 0.05)]
AGENTS = {"web": "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "ios": "ShopStream/5.2 (iPhone; iOS 18.1)",
          "android": "ShopStream/5.2 (Linux; Android 15)"}
ODD_USERS = ["ü-0042", "x:{7} y", " u00001"]   # valid ids: unicode, braces, colon, leading space


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    users: int = 400
    hours: float = 3.0
    start: str = "2026-11-02T08:00:00Z"
    bots: int = 3
    out_of_order: float = 0.02
    late: float = 0.002
    malformed: float = 0.003


def _pick(rng: random.Random, weighted):
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def _diurnal(hour_of_day: float) -> float:
    """Relative load: quiet at 04:00 UTC, peak around 19:00 UTC."""
    return 1.0 + 0.8 * math.sin((hour_of_day - 13.0) / 24.0 * 2 * math.pi)


class _Gen:
    def __init__(self, cfg: GeneratorConfig):
        self.cfg, self.rng = cfg, random.Random(cfg.seed)
        self.t0 = parse_timestamp(cfg.start)
        self.span = int(cfg.hours * 3600e6)
        self.products = [{"product_id": f"P{i:04d}", "name": f"Product {i}", "category": CATEGORIES[i % 8],
                          "price": round(self.rng.uniform(3, 400), 2), "stock": self.rng.randint(0, 500),
                          "updated_at": format_us(self.t0 - self.rng.randint(0, 30 * 86400) * 1_000_000)}
                         for i in range(200)]
        self.clicks: list[tuple[int, dict]] = []
        self.tx: list[dict] = []
        self.tickets: list[dict] = []
        self.seq = 0

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq:07d}-{self.rng.getrandbits(24):06x}"

    def _start_time(self) -> int:
        while True:  # rejection sampling against the diurnal curve
            t = self.t0 + self.rng.randrange(self.span)
            hour = (t // 3_600_000_000) % 24
            if self.rng.random() * 1.8 < _diurnal(hour):
                return t

    def _event(self, user: str, ts: int, etype: str, ctx: dict, product: dict | None = None) -> None:
        ev = {"event_id": self._id("e"), "user_id": user, "event_type": etype, "timestamp": format_us(ts),
              "session_id": ctx["sid"], "device": ctx["device"], "page_url": ctx["url"], "ip": ctx["ip"],
              "user_agent": AGENTS[ctx["device"]], "country": ctx["country"], "properties": {}}
        if product:
            ev["product_id"] = product["product_id"]
            ev["page_url"] = f"https://shop.example/p/{product['product_id']}"
            ev["properties"] = {"category": product["category"], "price": product["price"]}
        if ctx["device"] == "android":          # the android app sends epoch milliseconds
            ev["timestamp"] = ts // 1000
        elif ctx["device"] == "ios" and ctx["offset_h"]:
            local = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ts, hours=ctx["offset_h"])
            ev["timestamp"] = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}+{ctx['offset_h']:02d}:00"
        self.clicks.append((ts, ev))

    def visit(self, user: str, ts: int, country: str) -> None:
        rng = self.rng
        device = _pick(rng, DEVICES)
        ctx = {"sid": self._id("s"), "device": device, "country": country, "url": "https://shop.example/",
               "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
               "offset_h": rng.choice([0, 1, 2])}
        step = lambda: int(rng.expovariate(1 / 40) * 1e6) + 1_000_000  # noqa: E731
        self._event(user, ts, "page_view", ctx)
        viewed = []
        for _ in range(rng.randint(1, 8)):
            ts += step()
            product = rng.choice(self.products)
            viewed.append(product)
            self._event(user, ts, "product_view", ctx, product)
            if rng.random() < 0.05:
                ts += step()
                self._event(user, ts, rng.choice(["scroll", "wishlist_add", "video_play"]), ctx, product)
        if rng.random() < 0.35:
            ts += step()
            product = rng.choice(viewed)
            self._event(user, ts, "add_to_cart", ctx, product)
            if rng.random() < 0.6:
                ts += step()
                self._event(user, ts, "checkout", ctx)
                ts += step()
                ok = rng.random() < 0.9
                if ok:
                    self._event(user, ts, "purchase", ctx, product)
                self.tx.append({"transaction_id": self._id("t"), "user_id": user, "order_id": self._id("o"),
                                "amount": f"{product['price']:.2f}", "currency": "USD",
                                "status": "completed" if ok else "failed",
                                "payment_method": rng.choice(["card", "card", "paypal", "apple_pay"]),
                                "card_fingerprint": f"fp_{zlib.crc32(user.encode()):08x}",
                                "ip": ctx["ip"], "country": country, "timestamp": format_us(ts)})
        if rng.random() < 0.04:
            created = ts + rng.randint(60, 7200) * 1_000_000
            self.tickets.append({"ticket_id": self._id("k"), "user_id": user,
                                 "channel": rng.choice(["email", "chat", "phone"]),
                                 "category": rng.choice(["delivery", "refund", "payment", "account"]),
                                 "priority": rng.choice(["low", "medium", "high"]),
                                 "status": rng.choice(["open", "resolved"]), "created_at": format_us(created),
                                 "resolved_at": format_us(created + rng.randint(600, 86400) * 1_000_000)})

    def bot(self, user: str) -> None:
        """A scraper: 1-3 bursts of 150-400 events within a minute or two."""
        rng = self.rng
        ctx = {"sid": self._id("s"), "device": "web", "country": "US", "url": "https://shop.example/",
               "ip": f"203.0.113.{rng.randrange(1, 255)}", "offset_h": 0}
        for _ in range(rng.randint(1, 3)):
            ts = self._start_time()
            for _ in range(rng.randint(150, 400)):
                ts += rng.randint(50_000, 400_000)
                self._event(user, ts, "product_view", ctx, rng.choice(self.products))

    def build(self) -> None:
        rng = self.rng
        users = [f"u{i:05d}" for i in range(1, self.cfg.users + 1)] + ODD_USERS
        for user in users:
            country = _pick(rng, COUNTRIES)
            for _ in range(max(1, int(rng.expovariate(1 / 1.6)))):
                self.visit(user, self._start_time(), country)
        for i in range(self.cfg.bots):
            self.bot(f"bot{i:03d}")

    def arrival_order(self) -> list[bytes]:
        """Sort by event time, then deliver some out of order (within 5 min) and some late; add bad records."""
        rng, enc = self.rng, msgspec.json.Encoder()
        keyed = []
        for ts, ev in sorted(self.clicks, key=lambda x: (x[0], x[1]["event_id"])):
            r = rng.random()
            if r < self.cfg.late:
                delay = rng.randint(50, 120) * 60_000_000
            elif r < self.cfg.late + self.cfg.out_of_order:
                delay = rng.randint(1, 240) * 1_000_000
            else:
                delay = 0
            keyed.append((ts + delay, enc.encode(ev)))
        bad = [b'{"user_id": "u00007", "event_type": "page_view", "timestamp": "2026-11-02T25:61:00Z"}',
               b'{"user_id": "u00008", "event_type": "page_view"',
               b'{"event_type": "page_view", "timestamp": "2026-11-02T09:00:00Z"}',
               b'{"user_id": "u00009", "event_type": 42, "timestamp": "2026-11-02T09:00:00Z"}',
               b'{"user_id": "", "event_type": "page_view", "timestamp": "2026-11-02T09:00:00Z"}',
               b'{"user_id": "u00010", "event_type": "page_view", "timestamp": "2099-01-01T00:00:00Z"}',
               b'not json at all']
        for _ in range(max(len(bad), int(len(keyed) * self.cfg.malformed))):
            keyed.append((self.t0 + rng.randrange(self.span), rng.choice(bad)))
        keyed.sort(key=lambda x: x[0])
        return [raw for _, raw in keyed]


def write_all(out: Path, cfg: GeneratorConfig = GeneratorConfig()) -> dict[str, int]:
    gen = _Gen(cfg)
    gen.build()
    out.mkdir(parents=True, exist_ok=True)
    lines = gen.arrival_order()
    (out / "clickstream_events.json").write_bytes(b"\n".join(lines) + b"\n")
    with (out / "transactions.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["transaction_id", "user_id", "order_id", "amount", "currency",
                                                "status", "payment_method", "card_fingerprint", "ip", "country",
                                                "timestamp"])
        writer.writeheader()
        writer.writerows(sorted(gen.tx, key=lambda t: t["timestamp"]))
    enc = msgspec.json.Encoder()
    (out / "product_catalog.json").write_bytes(msgspec.json.format(enc.encode(gen.products), indent=1) + b"\n")
    (out / "customer_support_interactions.json").write_bytes(
        msgspec.json.format(enc.encode(sorted(gen.tickets, key=lambda t: t["created_at"])), indent=1) + b"\n")
    return {"clickstream_events.json": len(lines), "transactions.csv": len(gen.tx),
            "product_catalog.json": len(gen.products), "customer_support_interactions.json": len(gen.tickets)}
