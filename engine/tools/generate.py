"""Seeded generator of the four sample files the brief promised (DESIGN §2).

clickstream_events.json (JSON Lines, in *arrival* order): browse -> product -> cart -> checkout
-> purchase funnels, diurnal load, web/ios/android, a few bots far above 100 events a minute,
~2 % of events delivered out of order within the 5-minute bound, ~0.2 % delivered late (after
the session gap), ~0.3 % malformed records, timestamps as ISO ``Z``, ISO with an offset, and
epoch milliseconds, unknown event types.  transactions.csv, product_catalog.json and
customer_support_interactions.json follow the same users and purchases.

Fraud planting (``GeneratorConfig.fraud``, on by default) adds users who each show one fraud
pattern (card testing, card sharing, account takeover, an IP farm, inhuman speed; the bots
above are the click-burst pattern) and writes the ground truth, ``fraud_truth.jsonl``, beside
the data.  Planted records come from their own RNG and id sequence and are merged into the
files without moving a base record: with ``fraud=False`` the four files are byte for byte
what the generator wrote before planting existed.

(Over 300 lines: one table of planted fraud patterns and the clean traffic they hide in; a tool, not runtime.)
"""

from __future__ import annotations

import csv
import heapq
import math
import random
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from ..eventtime import format_us, parse_timestamp

CATEGORIES = ["electronics", "books", "fashion", "home", "toys", "sports", "beauty", "grocery"]
DEVICES = [("web", 0.5), ("ios", 0.3), ("android", 0.2)]
COUNTRIES = [("US", 0.45), ("GB", 0.15), ("DE", 0.15), ("FR", 0.1), ("IN", 0.1), ("BR", 0.05)]
AGENTS = {"web": "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "ios": "ShopStream/5.2 (iPhone; iOS 18.1)",
          "android": "ShopStream/5.2 (Linux; Android 15)"}
ODD_USERS = ["ü-0042", "x:{7} y", " u00001"]   # valid ids: unicode, braces, colon, leading space

MINUTE_US, HOUR_US = 60_000_000, 3_600_000_000
FRAUD_SEED_OFFSET = 0x46_52_41_55_44      # "FRAUD": planted records draw from Random(seed + this)
NEW_COUNTRIES = ["RO", "NG", "VN", "UA", "ID"]   # never a base country: a takeover's first-seen country
FARM_IP = "198.51.100.23"                 # TEST-NET-2; the base data uses 10/8 and 203.0.113/24
PATTERNS = ("bot", "card_testing", "card_sharing", "account_takeover", "ip_farm", "inhuman_speed")


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
    fraud: bool = True          # plant the fraud patterns below (the bots are base data either way)
    card_testers: int = 2       # ct001..: 6-10 tiny payments on distinct cards within 5 min, >= 4 failed
    card_sharers: int = 4       # cs001..: one card paying for all of them within one clock hour
    takeovers: int = 2          # ato001..: >= 90 min after their first visit, >= 600.00 from a new country
    farm_users: int = 15        # farm001..: one IP, all within 40 s of one clock minute
    speeders: int = 2           # fast001..: page_view -> add_to_cart -> checkout -> purchase in < 4 s

    def __post_init__(self):
        if self.fraud and (0 < self.card_sharers < 3 or 0 < self.farm_users < 11):
            raise ValueError("card_sharers must be 0 or >= 3 and farm_users 0 or >= 11 for their rules to fire")


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

    def arrival_keyed(self) -> list[tuple[int, bytes]]:
        """Sort by event time, then deliver some out of order (within 5 min) and some late; add bad records.
        Returns (arrival time, record) in arrival order."""
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
        return keyed


class _Planter:
    """The planted fraud patterns, built after the base data from their own RNG and their own id
    sequence (continuing the base one, so ids stay unique): no base record moves or changes.
    Planted timestamps are ISO ``Z`` and planted events arrive in event-time order (no noise).
    The shapes match the rule thresholds (docs in data/README.md); each planted user shows one pattern."""

    def __init__(self, gen: _Gen):
        self.cfg, self.products = gen.cfg, gen.products
        self.rng = random.Random(gen.cfg.seed + FRAUD_SEED_OFFSET)
        self.seq = gen.seq
        self.t0, self.end = gen.t0, gen.t0 + gen.span
        self.clicks: list[tuple[int, dict]] = []
        self.tx: list[dict] = []
        self.tickets: list[dict] = []
        self.truth = {f"bot{i:03d}": "bot" for i in range(gen.cfg.bots)}   # the base bots burst
        self.cards = {t["card_fingerprint"] for t in gen.tx}
        first = -(-self.t0 // HOUR_US) * HOUR_US                # whole clock hours inside the span
        self.hours = list(range(first, self.end - HOUR_US + 1, HOUR_US)) or [first]

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq:07d}-{self.rng.getrandbits(24):06x}"

    def _new_card(self) -> str:
        while (card := f"fp_{self.rng.getrandbits(32):08x}") in self.cards:
            pass
        self.cards.add(card)
        return card

    @staticmethod
    def _own_card(user: str) -> str:
        return f"fp_{zlib.crc32(user.encode()):08x}"               # as the base users' cards

    def _ctx(self, device: str, country: str, ip: str | None = None) -> dict:
        rng = self.rng
        return {"sid": self._id("s"), "device": device, "country": country,
                "ip": ip or f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"}

    def _step(self) -> int:
        """A human pause between two clicks: 3 s to 93 s."""
        return int((3 + min(self.rng.expovariate(1 / 30), 90)) * 1e6)

    def _event(self, user: str, ts: int, etype: str, ctx: dict, product: dict | None = None) -> None:
        ev = {"event_id": self._id("e"), "user_id": user, "event_type": etype, "timestamp": format_us(ts),
              "session_id": ctx["sid"], "device": ctx["device"], "page_url": "https://shop.example/",
              "ip": ctx["ip"], "user_agent": AGENTS[ctx["device"]], "country": ctx["country"], "properties": {}}
        if product:
            ev["product_id"] = product["product_id"]
            ev["page_url"] = f"https://shop.example/p/{product['product_id']}"
            ev["properties"] = {"category": product["category"], "price": product["price"]}
        self.clicks.append((ts, ev))

    def _pay(self, user: str, ts: int, amount: float, status: str, card: str, ctx: dict) -> None:
        self.tx.append({"transaction_id": self._id("t"), "user_id": user, "order_id": self._id("o"),
                        "amount": f"{amount:.2f}", "currency": "USD", "status": status, "payment_method": "card",
                        "card_fingerprint": card, "ip": ctx["ip"], "country": ctx["country"],
                        "timestamp": format_us(ts)})

    def _browse(self, user: str, ts: int, ctx: dict, products: list[dict]) -> int:
        """page_view then a product_view of each product, human pauses; returns the last event's time."""
        self._event(user, ts, "page_view", ctx)
        for product in products:
            ts += self._step()
            self._event(user, ts, "product_view", ctx, product)
        return ts

    def _buy(self, user: str, ts: int, ctx: dict, cart: list[dict], card: str) -> int:
        """add_to_cart each product, checkout, purchase and its completed payment; returns the purchase time."""
        for product in cart:
            ts += self._step()
            self._event(user, ts, "add_to_cart", ctx, product)
        ts += self._step()
        self._event(user, ts, "checkout", ctx)
        ts += self._step()
        self._event(user, ts, "purchase", ctx, cart[-1])
        self._pay(user, ts, sum(p["price"] for p in cart), "completed", card, ctx)
        return ts

    def card_testing(self, user: str) -> None:
        """A short visit, then 6-10 payments of 1.00-5.00 on distinct cards within 4.5 minutes, >= 4
        failed (and at least one card that works), all inside one clock hour."""
        rng = self.rng
        hour = rng.choice(self.hours)
        ctx = self._ctx("web", _pick(rng, COUNTRIES))
        product = rng.choice(self.products)
        ts = self._browse(user, hour + rng.randint(2 * 60, 40 * 60) * 1_000_000, ctx, [product])
        ts += self._step()
        self._event(user, ts, "add_to_cart", ctx, product)
        ts += self._step()
        self._event(user, ts, "checkout", ctx)
        ts += rng.randint(3, 10) * 1_000_000
        n = rng.randint(6, 10)
        failed = rng.randint(4, n - 1)
        statuses = ["failed"] * failed + ["completed"] * (n - failed)
        rng.shuffle(statuses)
        for offset, status in zip(sorted(rng.randrange(270_000_000) for _ in range(n)), statuses):
            at = ts + offset
            self._pay(user, at, rng.randint(100, 500) / 100, status, self._new_card(), ctx)
            if status == "completed":
                self._event(user, at, "purchase", ctx, product)

    def card_sharing(self, users: list[str]) -> None:
        """One normal visit each ending in a completed purchase, all paid with one card, the purchases
        between hh:05 and hh:40 of one clock hour (a visit lasts at most 7 pauses of 93 s)."""
        rng = self.rng
        hour, card = rng.choice(self.hours), self._new_card()
        for user in users:
            ctx = self._ctx(rng.choice(["web", "ios"]), _pick(rng, COUNTRIES))
            viewed = rng.sample(self.products, rng.randint(1, 4))
            ts = self._browse(user, hour + rng.randint(5 * 60, 28 * 60) * 1_000_000, ctx, viewed)
            self._buy(user, ts, ctx, [rng.choice(viewed)], card)

    def account_takeover(self, user: str) -> None:
        """An established customer (two visits from a home country in the first hour, a purchase with
        their own card), then >= 95 minutes after their first event a session from a country they were
        never seen in (not a base country) buying >= 600.00 with the same card, a few minutes in."""
        rng = self.rng
        home = self._ctx("ios", _pick(rng, COUNTRIES))
        card = self._own_card(user)
        self.cards.add(card)
        first = self.t0 + rng.randint(60, 8 * 60) * 1_000_000
        ts = self._browse(user, first, home, rng.sample(self.products, rng.randint(1, 2)))
        home["sid"] = self._id("s")
        viewed = rng.sample(self.products, rng.randint(1, 2))
        ts = self._browse(user, ts + rng.randint(31 * 60, 36 * 60) * 1_000_000, home, viewed)
        self._buy(user, ts, home, [rng.choice(viewed)], card)
        room = (self.end - first) // MINUTE_US - 20                 # leave 20 minutes before the end
        start = first + rng.randint(95 * 60, max(95, min(150, room)) * 60) * 1_000_000
        country = rng.choice(NEW_COUNTRIES)
        ip = f"{rng.choice([5, 31, 41, 102, 185])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        away = self._ctx("web", country, ip)
        pricey = sorted(self.products, key=lambda p: -p["price"])[:40]
        cart: list[dict] = []
        while sum(p["price"] for p in cart) < 600:
            cart.append(rng.choice([p for p in pricey if p not in cart]))
        at = self._buy(user, self._browse(user, start, away, cart), away, cart, card)
        created = at + rng.randint(20 * 60, 90 * 60) * 1_000_000   # the real owner notices
        self.tickets.append({"ticket_id": self._id("k"), "user_id": user, "channel": rng.choice(["chat", "phone"]),
                             "category": "account", "priority": "high", "status": "open",
                             "created_at": format_us(created),
                             "resolved_at": format_us(created + rng.randint(3600, 86400) * 1_000_000)})

    def ip_farm(self, users: list[str]) -> None:
        """Each user a page_view and one product_view on the web, all from FARM_IP, between mm:05 and
        mm:43 of one clock minute."""
        rng = self.rng
        minutes = (self.end - self.t0) // MINUTE_US
        minute = (self.t0 + rng.randint(10, max(10, minutes - 10)) * MINUTE_US) // MINUTE_US * MINUTE_US
        country = _pick(rng, COUNTRIES)
        spacing = 38_000_000 // len(users)
        for i, user in enumerate(users):
            ctx = self._ctx("web", country, FARM_IP)
            ts = minute + 5_000_000 + i * spacing + rng.randrange(spacing // 4)
            self._event(user, ts, "page_view", ctx)
            self._event(user, ts + rng.randint(800, 2000) * 1000, "product_view", ctx, rng.choice(self.products))

    def inhuman_speed(self, user: str) -> None:
        """page_view -> add_to_cart -> checkout -> purchase within 3.3 s, no product_view, paid."""
        rng = self.rng
        ctx = self._ctx("web", _pick(rng, COUNTRIES))
        minutes = (self.end - self.t0) // MINUTE_US
        ts = self.t0 + rng.randint(15 * 60, max(15, minutes - 15) * 60) * 1_000_000
        product = rng.choice(self.products)
        self._event(user, ts, "page_view", ctx)
        for etype in ("add_to_cart", "checkout", "purchase"):
            ts += rng.randint(500, 1100) * 1000
            self._event(user, ts, etype, ctx, None if etype == "checkout" else product)
        self._pay(user, ts, product["price"], "completed", self._own_card(user), ctx)

    def build(self) -> None:
        cfg = self.cfg
        # (id prefix, how many, pattern, planter, planted together) in a fixed order: the RNG's draws
        plan = [("ct", cfg.card_testers, "card_testing", self.card_testing, False),
                ("cs", cfg.card_sharers, "card_sharing", self.card_sharing, True),
                ("ato", cfg.takeovers, "account_takeover", self.account_takeover, False),
                ("farm", cfg.farm_users, "ip_farm", self.ip_farm, True),
                ("fast", cfg.speeders, "inhuman_speed", self.inhuman_speed, False)]
        for prefix, count, pattern, plant, together in plan:
            users = [f"{prefix}{i:03d}" for i in range(1, count + 1)]
            self.truth.update(dict.fromkeys(users, pattern))
            if together and users:
                plant(users)
            elif not together:
                for user in users:
                    plant(user)

    def arrival_keyed(self) -> list[tuple[int, bytes]]:
        """Planted events arrive in event-time order, each 20-400 ms after it happened."""
        enc, keyed, last = msgspec.json.Encoder(), [], 0
        for ts, ev in sorted(self.clicks, key=lambda x: (x[0], x[1]["event_id"])):
            last = max(last, ts + self.rng.randint(20_000, 400_000))
            keyed.append((last, enc.encode(ev)))
        return keyed


def write_all(out: Path, cfg: GeneratorConfig = GeneratorConfig()) -> dict[str, int]:
    """Write the four sample files and fraud_truth.jsonl (the bots, plus the planted users when
    ``cfg.fraud``) into ``out``; returns the record count of each file."""
    gen = _Gen(cfg)
    gen.build()
    base = gen.arrival_keyed()
    plant = _Planter(gen)
    if cfg.fraud:
        plant.build()
    out.mkdir(parents=True, exist_ok=True)
    # a stable merge by arrival time: base records keep their order (and win ties)
    lines = [raw for _, raw in heapq.merge(base, plant.arrival_keyed(), key=lambda x: x[0])]
    (out / "clickstream_events.json").write_bytes(b"\n".join(lines) + b"\n")
    tx = sorted(gen.tx + plant.tx, key=lambda t: t["timestamp"])       # stable: base order kept
    with (out / "transactions.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["transaction_id", "user_id", "order_id", "amount", "currency",
                                                "status", "payment_method", "card_fingerprint", "ip", "country",
                                                "timestamp"])
        writer.writeheader()
        writer.writerows(tx)
    enc = msgspec.json.Encoder()
    tickets = sorted(gen.tickets + plant.tickets, key=lambda t: t["created_at"])
    (out / "product_catalog.json").write_bytes(msgspec.json.format(enc.encode(gen.products), indent=1) + b"\n")
    (out / "customer_support_interactions.json").write_bytes(
        msgspec.json.format(enc.encode(tickets), indent=1) + b"\n")
    truth = [{"user_id": user, "pattern": pattern} for user, pattern in sorted(plant.truth.items())]
    (out / "fraud_truth.jsonl").write_bytes(b"".join(enc.encode(t) + b"\n" for t in truth))
    return {"clickstream_events.json": len(lines), "transactions.csv": len(tx),
            "product_catalog.json": len(gen.products), "customer_support_interactions.json": len(tickets),
            "fraud_truth.jsonl": len(truth)}
