"""An obviously-correct batch reference for the semantics contract (DESIGN §3) and the click rules.

Sort each user's events by time, split where the gap is strictly greater than G; count
events and distinct users per UTC minute; flag every user-minute with more than T events;
flag sessions with a purchase within S seconds of their start or a checkout without a product
interaction; in time order, flag the first event of a minute whose two-bucket estimate passes T.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from engine.eventtime import US_PER_MINUTE, format_us

GAP_US = 30 * 60 * 1_000_000


def _sessions(events, gap_us: int = GAP_US) -> list[tuple[str, list]]:
    """(user, [(ts, type), ...] sorted) for every session."""
    by_user = defaultdict(list)
    for user, ts, etype in events:
        by_user[user].append((ts, etype))
    out = []
    for user, evs in by_user.items():
        evs.sort()
        groups = [[evs[0]]]
        for prev, cur in zip(evs, evs[1:]):
            if cur[0] - prev[0] > gap_us:
                groups.append([])
            groups[-1].append(cur)
        out += [(user, g) for g in groups]
    return out


def sessions(events, gap_us: int = GAP_US) -> list[dict]:
    """events: iterable of (user_id, ts_us, event_type)."""
    out = [{"user_id": user, "start": format_us(g[0][0]), "end": format_us(g[-1][0]),
            "event_count": len(g), "counts": dict(Counter(t for _, t in g))} for user, g in _sessions(events, gap_us)]
    return sorted(out, key=lambda s: (s["user_id"], s["start"]))


def minutes(events) -> list[dict]:
    count, users = Counter(), defaultdict(set)
    for user, ts, _ in events:
        m = ts // US_PER_MINUTE
        count[m] += 1
        users[m].add(user)
    return [{"minute": format_us(m * US_PER_MINUTE), "events": count[m], "unique_users": len(users[m])}
            for m in sorted(count)]


def alerts(events, threshold: int = 100) -> list[tuple[str, str]]:
    per = Counter((user, ts // US_PER_MINUTE) for user, ts, _ in events)
    return sorted((format_us(m * US_PER_MINUTE), user) for (user, m), n in per.items() if n > threshold)


def inhuman_speed(events, within_us: int = 10_000_000) -> list[tuple[str, str]]:
    """(session start, user) of sessions with a fast purchase, or a checkout and no product
    interaction (no product_view, no add_to_cart)."""
    out = []
    for user, g in _sessions(events):
        types = Counter(t for _, t in g)
        fast = any(t == "purchase" and ts - g[0][0] < within_us for ts, t in g)
        blind = types["checkout"] > 0 and types["product_view"] + types["add_to_cart"] == 0
        if fast or blind:
            out.append((format_us(g[0][0]), user))
    return sorted(out)


def bursts(events_in_order, threshold: int = 100) -> list[tuple[str, str]]:
    """(minute, user) where, applying events in the given order, some event's estimate
    count(this minute so far) + count(previous minute so far) x (1 - elapsed part of this minute)
    exceeds the threshold."""
    count: Counter = Counter()
    fired = set()
    for user, ts, _ in events_in_order:
        m = ts // US_PER_MINUTE
        count[user, m] += 1
        estimate = count[user, m] + count[user, m - 1] * (1 - (ts - m * US_PER_MINUTE) / US_PER_MINUTE)
        if estimate > threshold:
            fired.add((format_us(m * US_PER_MINUTE), user))
    return sorted(fired)
