"""Synthetic traffic for the benchmark (pure, seeded, fast).

``generate``: a clickstream.  Users browse in sessions (gaps of seconds inside, hours between)
from their own device, country and address (a fifth of them from a second, mobile, address in
some sessions), a few bots burst well over 100 events a minute, and 2 % of events arrive out of
order within the 5-minute bound.  Returns the events already encoded as JSON, in arrival order.
This is the file of ``make bench-run`` (the issue-15 comparison with Flink: clicks only).

``generate_mixed``: what ``shopstream bench`` streams: the same browsing (each session's clicks in
funnel order: a cart after a product page, a checkout after a cart, a purchase after a checkout;
ordinary customers drawn at random once started 4 sessions in 10 at a checkout, and a third of
them were stepped up by inhuman_speed), plus the payments of
the purchases (two cards for some users, failed payments retried), support tickets, and fraud-like
actors for every rule, so many that every rule alerts about 1,000 times per 1M events (the
bench times each rule's detection separately); fraud is about 18 % of the events:

    bots              bursts of 110-180 clicks in a minute       events_per_minute, burst
    card testers      6-9 small payments on new cards in 5 min   failed_payments, card_testing (user)
    card sharers      3-4 users paying with one card in an hour  card_testing (card: re-keyed)
    IP farms          12-14 users clicking from one IP           ip_users (re-keyed)
    takeovers         a big purchase from a far country          impossible_travel (account_takeover needs
                                                                 a week of history the stream has not)
    speeders          purchase within seconds of arriving        inhuman_speed (on the purchase)

``subject_triggers`` finds, for each re-keyed alert (IP, card), the arrival index of the event
that tips it over and the subject's users by then, so the bench can time those alerts and their
members' decisions (they carry no entry id).
"""

from __future__ import annotations

import random
import zlib
from typing import NamedTuple

import msgspec

from ..eventtime import format_us
from ..keys import CLICKS, SUPPORT, TX

TYPES = ("page_view", "product_view", "product_view", "product_view", "add_to_cart", "checkout", "purchase")
# the mixed stream's funnel: about 3 % of clicks are purchases (each a payment)
FUNNEL = ("page_view",) * 30 + ("product_view",) * 45 + ("search",) * 5 + ("add_to_cart",) * 12 + \
    ("checkout",) * 5 + ("purchase",) * 3
DEVICES = ("web",) * 5 + ("ios",) * 3 + ("android",) * 2
COUNTRIES = ("US",) * 9 + ("GB",) * 3 + ("DE",) * 3 + ("FR",) * 2 + ("IN",) * 2 + ("BR",)
NEW_COUNTRIES = ("RO", "NG", "VN", "UA", "ID")
T0 = 1_793_520_000_000_000          # 2026-11-01T06:40:00Z
MIN_US = 60_000_000


class BenchEvent(msgspec.Struct, array_like=False):
    event_id: str
    user_id: str
    event_type: str
    timestamp: str
    device: str
    page_url: str
    ip: str
    country: str


class BenchTx(msgspec.Struct):
    transaction_id: str
    user_id: str
    amount: str
    status: str
    timestamp: str
    currency: str
    payment_method: str
    card_fingerprint: str
    ip: str
    country: str


class BenchTicket(msgspec.Struct):
    ticket_id: str
    user_id: str
    status: str
    created_at: str
    updated_at: str
    channel: str
    category: str
    priority: str


def _ip(user: str, salt: int = 0) -> str:
    h = zlib.crc32(user.encode()) ^ salt
    return f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}"


class _User(NamedTuple):
    device: str
    country: str
    ip: str
    mobile_ip: str          # '' when the user has one address


def _profile(rng: random.Random, user: str) -> _User:
    mobile = f"100.{rng.randrange(64, 128)}.{rng.randrange(256)}.{rng.randrange(256)}" if rng.random() < 0.2 else ""
    return _User(DEVICES[rng.randrange(len(DEVICES))], COUNTRIES[rng.randrange(len(COUNTRIES))], _ip(user), mobile)


def _browse(rng: random.Random, span: int, per_user: int, types: tuple) -> list[tuple[int, str, bool]]:
    """One user's clicks: (ts, type, from the second address)."""
    ts = T0 + rng.randrange(span // 2)
    second = False
    out = []
    for _ in range(per_user):
        if rng.random() > 0.08:
            ts += rng.randrange(2_000_000, 60_000_000)
        else:                                   # a new session, maybe from the other address
            ts += rng.randrange(1_900_000_000, 7_200_000_000)
            second = rng.random() < 0.5
        out.append((ts, types[rng.randrange(len(types))], second))
    return out


# A step of the funnel needs the one before it in the same session (a customer checks out a cart,
# and fills it from a product page); a type drawn before its step is taken back to the step due.
_NEEDS = {"add_to_cart": "product_view", "checkout": "add_to_cart", "purchase": "checkout"}


def _in_funnel_order(clicks: list[tuple[int, str, bool]], gap_us: int = 1_800_000_000) -> list[tuple[int, str, bool]]:
    """The clicks of _browse with each session's types in funnel order (sessions: gaps < gap_us)."""
    out, seen, last = [], set(), None
    for ts, etype, second in clicks:
        if last is None or ts - last >= gap_us:
            seen = set()
        last = ts
        while etype in _NEEDS and _NEEDS[etype] not in seen:
            etype = _NEEDS[etype]
        seen.add(etype)
        out.append((ts, etype, second))
    return out


def _disorder(rng: random.Random, ts: int, out_of_order: float, bound_us: int) -> int:
    """The arrival key: 2 % of events arrive up to the bound later than their event time."""
    return ts + (rng.randrange(bound_us) if rng.random() < out_of_order else 0)


def generate(events: int, users: int = 20_000, seed: int = 1, hours: float = 6.0,
             bots: int = 20, out_of_order: float = 0.02, bound_us: int = 300_000_000) -> list[bytes]:
    rng = random.Random(seed)
    span = int(hours * 3600e6)
    per_user = max(1, (events - bots * 600) // users)
    stamped: list[tuple[int, str, str, bool]] = []
    profiles: dict[str, _User] = {}
    for u in range(users):
        user = f"user{u:06d}"
        profiles[user] = _profile(rng, user)
        stamped += [(ts, user, etype, second) for ts, etype, second in _browse(rng, span, per_user, TYPES)]
    for b in range(bots):                                   # bursts of 120-200 events in one minute
        user = f"bot{b:03d}"
        profiles[user] = _User("web", "US", _ip(user), "")
        for _ in range(3):
            base = T0 + rng.randrange(span)
            for i in range(rng.randint(120, 200)):
                stamped.append((base + i * 300_000, user, "product_view", False))
    while len(stamped) < events:                            # top up with single visits
        stamped.append((T0 + rng.randrange(span), f"user{rng.randrange(users):06d}", "page_view", False))
    stamped = stamped[:events]
    keyed = [(_disorder(rng, ts, out_of_order, bound_us), ts, user, etype, second)
             for ts, user, etype, second in stamped]
    keyed.sort()
    enc = msgspec.json.Encoder()
    out = []
    for n, (_, ts, user, etype, second) in enumerate(keyed):
        p = profiles[user]
        out.append(enc.encode(BenchEvent(f"e{n}", user, etype, format_us(ts), p.device, "https://shop.example/p/1",
                                         p.mobile_ip if second and p.mobile_ip else p.ip, p.country)))
    return out


class Mixed(NamedTuple):
    sources: list[str]        # engine/keys.py CLICKS, TX or SUPPORT, per event
    payloads: list[bytes]     # the events' JSON, in arrival order

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            out[s] = out.get(s, 0) + 1
        return out


def generate_mixed(events: int, users: int = 20_000, seed: int = 1, hours: float = 6.0,
                   out_of_order: float = 0.02, bound_us: int = 300_000_000) -> Mixed:
    """Clicks, payments and tickets of ``users`` users plus the fraud-like actors (module docstring);
    about ``events`` events (exactly, unless events is too small for the actors)."""
    rng = random.Random(seed)
    span = int(hours * 3600e6)
    scale = events / 1_000_000
    # (arrival key, ts, source, fields): fields are the tuple each source's encoder below takes
    rows: list[tuple[int, int, str, tuple]] = []
    base_clicks: list[int] = []           # indexes of the base users' clicks (trimmed to fit)
    tx_n = 0

    def click(ts, user, etype, device, ip, country, base=False):
        if base:
            base_clicks.append(len(rows))
        rows.append((_disorder(rng, ts, out_of_order, bound_us), ts, CLICKS, (user, etype, device, ip, country)))

    def pay(ts, user, amount_minor, ok, card, ip, country, method="card"):
        nonlocal tx_n
        tx_n += 1
        rows.append((_disorder(rng, ts, out_of_order, bound_us), ts, TX,
                     (f"tx{tx_n}", user, f"{amount_minor // 100}.{amount_minor % 100:02d}",
                      "completed" if ok else "failed", card, ip, country, method)))

    def ticket(ts, user, tid, status, created):
        rows.append((_disorder(rng, ts, out_of_order, bound_us), ts, SUPPORT, (tid, user, status, created)))

    # -- fraud-like actors (their own ids; scaled with the event count) -------------------------
    for b in range(max(2, int(250 * scale))):               # bots: 4 bursts of 105-140 clicks a minute
        user = f"bot{b:04d}"
        for _ in range(4):
            ts = T0 + rng.randrange(span)
            for _ in range(rng.randint(105, 140)):
                ts += rng.randrange(200_000, 450_000)
                click(ts, user, "product_view", "web", _ip(user), "US")
    for c in range(max(1, int(1000 * scale))):               # card testers
        user = f"ct{c:05d}"
        ip, ts = _ip(user), T0 + rng.randrange(span)
        for _ in range(3):
            ts += rng.randrange(2_000_000, 20_000_000)
            click(ts, user, "checkout", "web", ip, "US")
        n = rng.randint(6, 9)
        failed = set(rng.sample(range(n), rng.randint(4, n)))
        for i in range(n):
            ts += rng.randrange(5_000_000, 30_000_000)
            pay(ts, user, rng.randrange(50, 200), i not in failed, f"fp-ct{c}-{i}", ip, "US")
    for g in range(max(1, int(1000 * scale))):               # card sharers: one card, 3-4 users, one hour
        card, ts = f"fp-shared{g}", T0 + rng.randrange(span)
        ts -= ts % (60 * MIN_US)                           # inside one 60-minute window
        for m in range(rng.randint(3, 4)):
            user = f"cs{g:04d}m{m}"
            t = ts + rng.randrange(0, 50 * MIN_US)
            click(t, user, "checkout", "ios", _ip(user), "GB")
            pay(t + rng.randrange(3_000_000, 20_000_000), user, rng.randrange(2_000, 30_000), True, card, _ip(user), "GB")
    for f in range(max(1, int(1000 * scale))):              # IP farms: 12-14 users behind one IP, one window
        ip, ts = f"198.51.{f >> 8 & 255}.{f & 255}", T0 + rng.randrange(span)
        ts -= ts % (10 * MIN_US)
        for m in range(rng.randint(12, 14)):
            user = f"farm{f:04d}m{m}"
            t = ts + rng.randrange(0, 7 * MIN_US)
            for _ in range(2):
                t += rng.randrange(1_000_000, 10_000_000)
                click(t, user, "product_view", "android", ip, "IN")
    for a in range(max(1, int(1000 * scale))):               # takeovers: visit, then a big buy from far away
        user = f"ato{a:05d}"
        ts = T0 + rng.randrange(span // 2)
        for _ in range(4):
            ts += rng.randrange(5_000_000, 60_000_000)
            click(ts, user, "product_view", "web", _ip(user), "US")
        ts += rng.randrange(95 * MIN_US, 150 * MIN_US)
        country = NEW_COUNTRIES[rng.randrange(len(NEW_COUNTRIES))]
        ip = f"203.0.{113 + (a >> 8)}.{a & 255}"
        for etype in ("page_view", "checkout"):
            ts += rng.randrange(5_000_000, 30_000_000)
            click(ts, user, etype, "web", ip, country)
        pay(ts + rng.randrange(2_000_000, 10_000_000), user, rng.randrange(60_000, 250_000), True, f"fp-ato{a}", ip,
            country)
    for s in range(max(1, int(1000 * scale))):               # speeders: purchase seconds after arriving
        user = f"fast{s:04d}"
        ts = T0 + rng.randrange(span)
        for etype in ("page_view", "add_to_cart", "checkout", "purchase"):
            ts += rng.randrange(300_000, 1_000_000)
            click(ts, user, etype, "web", _ip(user), "FR")
    fraud = len(rows)

    # -- the base users: browsing, their payments (about 1 click in 30) and tickets -------------
    per_user = max(1, int((events - fraud) / users / 1.045))
    profiles = {}
    for u in range(users):
        user = f"user{u:06d}"
        p = profiles[user] = _profile(rng, user)
        cards = [f"fp-{user}-a"] + ([f"fp-{user}-b"] if rng.random() < 0.15 else [])
        for ts, etype, second in _in_funnel_order(_browse(rng, span, per_user, FUNNEL)):
            ip = p.mobile_ip if second and p.mobile_ip else p.ip
            click(ts, user, etype, p.device, ip, p.country, base=True)
            if etype == "purchase":
                t = ts + rng.randrange(1_000_000, 5_000_000)
                card = cards[rng.randrange(len(cards))]
                amount = rng.randrange(500, 40_000)
                if rng.random() < 0.05:                      # declined, then paid
                    pay(t, user, amount, False, card, ip, p.country)
                    t += rng.randrange(10_000_000, 60_000_000)
                pay(t, user, amount, True, card, ip, p.country)
        if rng.random() < 0.1:                               # a ticket: opened, then resolved
            created = T0 + rng.randrange(span)
            tid = f"tk-{user}"
            ticket(created, user, tid, "open", created)
            ticket(created + rng.randrange(10 * MIN_US, 120 * MIN_US), user, tid, "resolved", created)
    if len(rows) > events and base_clicks:                  # too many: drop base clicks at random
        drop = set(rng.sample(base_clicks, min(len(base_clicks), len(rows) - events)))
        rows = [r for i, r in enumerate(rows) if i not in drop]
    while len(rows) < events:                               # too few: single visits, from home
        user = f"user{rng.randrange(users):06d}"
        p = profiles[user]
        ts = T0 + rng.randrange(span)
        click(ts, user, "page_view", p.device, p.ip, p.country)
    rows.sort(key=lambda r: r[0])

    enc = msgspec.json.Encoder()
    sources, payloads = [], []
    for n, (_, ts, source, f) in enumerate(rows):
        when = format_us(ts)
        if source == CLICKS:
            user, etype, device, ip, country = f
            raw = enc.encode(BenchEvent(f"e{n}", user, etype, when, device, "https://shop.example/p/1", ip, country))
        elif source == TX:
            tid, user, amount, status, card, ip, country, method = f
            raw = enc.encode(BenchTx(tid, user, amount, status, when, "USD", method, card, ip, country))
        else:
            tid, user, status, created = f
            raw = enc.encode(BenchTicket(tid, user, status, format_us(created), when, "email", "delivery", "normal"))
        sources.append(source)
        payloads.append(raw)
    return Mixed(sources, payloads)


class _Who(msgspec.Struct):
    user_id: str


def ordinary(mixed: Mixed) -> Mixed:
    """The ordinary customers' events of a mixed stream (users ``user<n>``), without the fraud-like actors."""
    who = msgspec.json.Decoder(_Who).decode
    keep = [i for i, raw in enumerate(mixed.payloads) if who(raw).user_id.startswith("user")]
    return Mixed([mixed.sources[i] for i in keep], [mixed.payloads[i] for i in keep])


def user_count(mixed: Mixed) -> int:
    """The distinct users of a stream."""
    who = msgspec.json.Decoder(_Who).decode
    return len({who(raw).user_id for raw in mixed.payloads})


class _Seen(msgspec.Struct):
    user_id: str
    timestamp: str = ""
    ip: str = ""
    card_fingerprint: str = ""


class Trigger(NamedTuple):
    index: int                  # the arrival index of the event that tips the alert over
    users: frozenset            # the subject's users up to it (the alert's members, in this approximation)


def subject_triggers(mixed: Mixed, ip_users: int = 10, ip_window_min: int = 60, card_users: int = 3,
                     card_window_min: int = 1440) -> dict[tuple[str, str, str, int], Trigger]:
    """(rule, subject kind, subject, window start ms) -> the Trigger of the re-keyed alert: the
    arrival index of the event that tips it over (ip_users: the (threshold+1)-th distinct user of an
    IP in its window, from clicks and payments; card_testing on a card: the card_users-th distinct
    user of a card) and the users seen until then.  The
    rules count over sliding horizons and alert once per period of the horizon's length: counting
    per period is the approximation (the shortest horizons of ops/rules.toml: 1 h and 24 h)."""
    from ..eventtime import parse_timestamp
    dec = msgspec.json.Decoder(_Seen)
    ip_w, card_w = ip_window_min * MIN_US, card_window_min * MIN_US
    seen: dict[tuple, set] = {}
    out: dict[tuple[str, str, str, int], int] = {}
    for i, (source, raw) in enumerate(zip(mixed.sources, mixed.payloads)):
        if source == SUPPORT:
            continue
        e = dec.decode(raw)
        ts = parse_timestamp(e.timestamp)
        checks = []
        if e.ip:
            checks.append(("ip_users", "ip", e.ip, ts - ts % ip_w, ip_users + 1))
        if source == TX and e.card_fingerprint:
            checks.append(("card_testing", "card", e.card_fingerprint, ts - ts % card_w, card_users))
        for rule, kind, subject, window, needed in checks:
            key = (rule, kind, subject, window // 1000)
            if key in out:
                continue
            users = seen.setdefault(key, set())
            users.add(e.user_id)
            if len(users) >= needed:
                out[key] = Trigger(i, frozenset(users))
                del seen[key]
    return out
