"""An obviously-correct batch reference for the semantics contract (DESIGN §3).

Sort each user's events by time, split where the gap is strictly greater than G; count
events and distinct users per UTC minute; flag every user-minute with more than T events.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from engine.eventtime import US_PER_MINUTE, format_us

GAP_US = 30 * 60 * 1_000_000


def sessions(events, gap_us: int = GAP_US) -> list[dict]:
    """events: iterable of (user_id, ts_us, event_type)."""
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
        for g in groups:
            out.append({"user_id": user, "start": format_us(g[0][0]), "end": format_us(g[-1][0]),
                        "event_count": len(g), "counts": dict(Counter(t for _, t in g))})
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
