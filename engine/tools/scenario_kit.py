"""Building blocks of the scenario library (engine/tools/scenarios.py): people, devices, sessions,
payments and tickets with human (or machine) timing, written as the engine's input records.

Written from how shoppers and fraudsters behave, not from the rules: nothing here knows a threshold.
Every size, speed and gap is drawn from a seeded random generator, so no scenario sits on one number.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources

UTC = timezone.utc
DAY = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)      # the evaluated day starts here; history lies before it
SHOP = "https://shop.example"

# Real user agents per device kind; one is kept per device for its whole life.
AGENTS = {
    "ios": ["ShopStream/5.2 (iPhone; iOS 18.1)", "ShopStream/5.2 (iPhone; iOS 17.6)", "ShopStream/5.1 (iPad; iPadOS 18.0)"],
    "android": ["ShopStream/5.2 (Linux; Android 15)", "ShopStream/5.2 (Linux; Android 14)", "ShopStream/5.0 (Linux; Android 13)"],
    "web": ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Safari/605.1",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Edg/131.0"],
}
HEADLESS = ["Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0", "python-requests/2.32", "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
            "okhttp/4.12", "Go-http-client/2.0"]
# Home countries, weighted roughly like a US-based shop that ships internationally.
COUNTRIES = ["US"] * 10 + ["GB"] * 3 + ["DE"] * 2 + ["FR", "CA", "CA", "ES", "IT", "NL", "IN", "BR", "MX", "AU", "JP", "PL", "SE"]
NEIGHBOURS = {"US": ["CA", "MX"], "GB": ["IE", "FR", "NL"], "DE": ["AT", "NL", "FR"], "FR": ["ES", "BE", "DE"],
              "CA": ["US"], "ES": ["PT", "FR"], "IT": ["FR", "CH"], "NL": ["BE", "DE"], "IN": ["AE", "SG"],
              "BR": ["AR", "PT"], "MX": ["US"], "AU": ["NZ"], "JP": ["KR"], "PL": ["DE", "CZ"], "SE": ["NO", "DK"]}
FAR = ["JP", "AU", "BR", "ZA", "TH", "IN", "AE", "SG", "KR", "MX", "AR", "NG", "TR", "ID"]


def catalog() -> list[tuple[str, str, float]]:
    """(product_id, category, price) of the sample catalog (data/product_catalog.json)."""
    raw = json.loads(resources.files("shopstream.data").joinpath("product_catalog.json").read_text())
    return [(p["product_id"], p["category"], float(p["price"])) for p in raw]


CATALOG = catalog()


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def human_gap(rng: random.Random, median: float = 25.0, spread: float = 0.8, low: float = 1.5) -> timedelta:
    """A person's time between two page events: log-normal around ``median`` seconds."""
    return timedelta(seconds=max(low, rng.lognormvariate(math.log(median), spread)))


@dataclass
class Device:
    kind: str
    ua: str


@dataclass
class Person:
    """A customer account and what it usually looks like."""

    uid: str
    country: str
    device: Device
    ip: str
    cards: list[str] = field(default_factory=list)
    method: str = "card"                 # the usual way to pay
    products: list[tuple[str, str, float]] = field(default_factory=list)   # bought before (buy again)
    second: Device | None = None         # many people shop on a phone and a laptop


class Book:
    """The records and labels of one scenario, with ids unique across the library."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = random.Random(f"{seed}:{name}")
        self.records: list[tuple[datetime, int, dict]] = []
        self.labels: dict[str, dict] = {}
        self._n = 0

    # -- identities --------------------------------------------------------------------------
    def ip(self, prefix: str | None = None) -> str:
        r = self.rng
        if prefix:
            return f"{prefix}.{r.randint(1, 254)}"
        first = r.choice([24, 31, 37, 46, 62, 68, 71, 73, 76, 81, 86, 90, 98, 99, 108, 151, 174, 176, 185, 188, 201, 213])
        return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def card(self) -> str:
        return "fp_" + "".join(self.rng.choice("0123456789abcdef") for _ in range(10))

    def device(self, kind: str | None = None) -> Device:
        kind = kind or self.rng.choice(["web", "web", "ios", "android"])
        return Device(kind, self.rng.choice(AGENTS[kind]))

    def person(self, uid: str, country: str | None = None, kind: str | None = None, cards: int = 1) -> Person:
        r = self.rng
        p = Person(uid, country or r.choice(COUNTRIES), self.device(kind), self.ip(), [self.card() for _ in range(cards)])
        p.method = r.choice(["card"] * 5 + ["paypal"] * 2 + (["apple_pay"] * 2 if p.device.kind == "ios" else ["google_pay"]))
        if r.random() < 0.4:
            p.second = self.device("web" if p.device.kind != "web" else r.choice(["ios", "android"]))
        return p

    def uid(self, prefix: str, i: int) -> str:
        return f"{prefix}{i:03d}"

    def label(self, who: Person | str, pattern: str, fraud: bool, named: bool, fraud_at: datetime | None = None) -> None:
        uid = who if isinstance(who, str) else who.uid
        self.labels[uid] = {"user_id": uid, "pattern": pattern, "fraud": fraud, "named": named,
                            "fraud_at": iso(fraud_at) if fraud_at else None}

    # -- records -----------------------------------------------------------------------------
    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.name}-{kind}{self._n:05d}"

    def click(self, p: Person, t: datetime, event_type: str, page: str = "/", product: tuple | None = None, *,
              ip: str | None = None, country: str | None = None, device: Device | None = None, **props) -> datetime:
        d = device or p.device
        rec = {"event_id": self._id("e"), "user_id": p.uid, "event_type": event_type, "timestamp": iso(t),
               "device": d.kind, "user_agent": d.ua, "ip": ip or p.ip, "country": country or p.country,
               "page_url": SHOP + page}
        if product:
            rec["product_id"] = product[0]
            props = {"category": product[1], "price": product[2], **props}
        rec["properties"] = {k: v for k, v in props.items() if v is not None}
        self.records.append((t, 0, rec))
        return t

    def tx(self, p: Person, t: datetime, amount: float, status: str = "completed", *, method: str | None = None,
           card: str | None = None, ip: str | None = None, country: str | None = None, order: str | None = None) -> str:
        method = method or p.method
        rec = {"transaction_id": self._id("t"), "user_id": p.uid, "order_id": order or self._id("o"),
               "amount": f"{amount:.2f}", "currency": "USD", "status": status, "payment_method": method,
               "card_fingerprint": card or (p.cards[0] if p.cards else ""), "ip": ip or p.ip,
               "country": country or p.country, "timestamp": iso(t)}
        self.records.append((t, 1, rec))
        return rec["order_id"]

    def ticket(self, p: Person, t: datetime, category: str, *, channel: str = "chat", priority: str = "low",
               resolve_hours: float | None = None) -> None:
        """A support ticket as the support tool exports it: a snapshot when it is opened, and one
        more when it is resolved (``resolve_hours`` later), each stamped with ``updated_at``."""
        tid = self._id("k")
        base = {"ticket_id": tid, "user_id": p.uid, "channel": channel, "category": category, "priority": priority,
                "created_at": iso(t)}
        self.records.append((t, 2, {**base, "status": "open", "updated_at": iso(t)}))
        if resolve_hours is not None:
            done = t + timedelta(hours=resolve_hours)
            self.records.append((done, 2, {**base, "status": "resolved", "updated_at": iso(done), "resolved_at": iso(done)}))

    # -- behaviour ---------------------------------------------------------------------------
    def products(self, n: int, category: str | None = None, low: float = 0, high: float = 1e9) -> list[tuple]:
        pool = [c for c in CATALOG if (category is None or c[1] == category) and low <= c[2] <= high] or CATALOG
        return [self.rng.choice(pool) for _ in range(n)]

    def shop(self, p: Person, start: datetime, *, views: int | None = None, buy: bool = True, items: int | None = None,
             entry: str = "direct", login: bool | None = None, pace: float = 25.0, ip: str | None = None,
             country: str | None = None, device: Device | None = None, method: str | None = None,
             card: str | None = None, category: str | None = None, low: float = 0, high: float = 1e9,
             amount: float | None = None, tx_ip: str | None = None) -> tuple[datetime, datetime | None, float]:
        """A human visit: landing, maybe login and a search, product views with reading time, cart,
        checkout and payment.  Returns (last event time, purchase time or None, amount)."""
        r = self.rng
        where = {"ip": ip, "country": country, "device": device}
        t = start
        landing = {"push": "/deals", "email": "/campaign/weekly", "search": "/", "direct": "/", "social": "/trending",
                   "order_history": "/account/orders"}.get(entry, "/")
        self.click(p, t, "page_view", landing, entry_point=entry, **where)
        if login if login is not None else r.random() < 0.35:
            t += human_gap(r, 12, 0.5)
            self.click(p, t, "login", "/login", **where)
        views = views if views is not None else r.randint(2, 9)
        seen = self.products(views, category, low, high)
        if r.random() < 0.6:
            t += human_gap(r, 10, 0.6)
            self.click(p, t, "search", "/search?q=" + (category or seen[0][1]), **where)
        for prod in seen:
            t += human_gap(r, pace, 0.8)
            self.click(p, t, "product_view", f"/p/{prod[0]}", prod, **where)
        if not buy:
            return t, None, 0.0
        cart = seen[-(items or r.randint(1, min(3, len(seen)))):] if seen else self.products(items or 1, category, low, high)
        for prod in cart:
            t += human_gap(r, 8, 0.6)
            self.click(p, t, "add_to_cart", f"/p/{prod[0]}", prod, **where)
        t += human_gap(r, 20, 0.6)
        self.click(p, t, "checkout", "/checkout", **where)
        t += human_gap(r, 45, 0.5, low=6)
        total = amount if amount is not None else round(sum(c[2] for c in cart), 2)
        self.click(p, t, "purchase", "/checkout/confirm", **where)
        self.tx(p, t + timedelta(milliseconds=r.randint(300, 2500)), total, method=method, card=card,
                ip=tx_ip or ip, country=country)
        return t, t, total

    def history(self, p: Person, sessions: tuple[int, int] = (2, 6), days: tuple[float, float] = (1, 14),
                buy_rate: float = 0.45) -> datetime:
        """Ordinary past visits over the days before the evaluated day, from the person's own
        device, IP and country, paying the usual way.  Returns the last event time."""
        r = self.rng
        n = r.randint(*sessions)
        starts = sorted(DAY - timedelta(days=r.uniform(*days), hours=r.uniform(0, 10)) for _ in range(n))
        last = starts[0]
        for s in starts:
            if s <= last + timedelta(hours=2) and s is not starts[0]:
                continue
            device, ip = None, None
            if p.second and r.random() < 0.35:         # the other device; a phone often on the carrier's IP
                device = p.second
                ip = self.ip() if device.kind != "web" and r.random() < 0.5 else None
            last, _, _ = self.shop(p, s, buy=r.random() < buy_rate, device=device, ip=ip, tx_ip=ip,
                                   entry=r.choice(["direct", "search", "email", "push", "social"]))
        if not p.products:
            p.products = self.products(r.randint(2, 5))       # what they bought before (buy again)
        return last

    def when(self, hours: tuple[float, float] = (1, 13)) -> datetime:
        """A random moment of the evaluated day."""
        return DAY + timedelta(hours=self.rng.uniform(*hours), milliseconds=self.rng.randint(0, 999))

    def lines(self) -> list[str]:
        """The scenario file: records in event time (clicks, then payments, then tickets at one instant),
        then the labels sorted by user."""
        out = []
        for t, order, rec in sorted(self.records, key=lambda x: (x[0], x[1], x[2].get("event_id") or x[2].get("transaction_id") or x[2].get("ticket_id"))):
            source = ("click", "transaction", "ticket")[order]
            out.append(json.dumps({"source": source, **rec}, separators=(",", ":")))
        for uid in sorted(self.labels):
            out.append(json.dumps({"label": self.labels[uid]}, separators=(",", ":")))
        return out
