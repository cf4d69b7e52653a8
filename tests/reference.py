"""An obviously-correct batch reference for the semantics contract (DESIGN §3) and the click rules.

Sort each user's events by time, split where the gap is strictly greater than G; count
events and distinct users per UTC minute; flag every user-minute with more than T events;
flag sessions with a purchase within S seconds of their start or a checkout without a product
interaction; in time order, flag the first event of a minute whose two-bucket estimate passes T.

The second half is the streaming contract (DESIGN §3), for inputs where the publish order matters:
late_and_applied (watermark quorum, lateness, producer retries, advances) says which clicks are
applied; streamed_sessions closes sessions by the watermark; rule_alerts lists every click-rule
alert with its count.  tests/test_properties.py checks the engine against them.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from shopstream.engine.eventtime import US_PER_MINUTE, format_us

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
    """(minute, user) where, applying events in the given (event-time) order, more than threshold
    of the user's events fall in the 60 whole seconds up to the event's second."""
    seconds: dict = defaultdict(Counter)
    fired = set()
    for user, ts, _ in events_in_order:
        sec = ts // 1_000_000
        seconds[user][sec] += 1
        if sum(c for k, c in seconds[user].items() if sec - 60 < k <= sec) > threshold:
            fired.add((format_us(ts // US_PER_MINUTE * US_PER_MINUTE), user))
    return sorted(fired)


# -- the streaming contract: watermark quorum, lateness, retries, advances --------------------
# The engine applies each partition's clicks in publish order.  What is late, what a retry is,
# and when a session closes depend on that order; everything else is computed from what was
# applied.  The functions below simulate that, one partition at a time, with plain Python.

B_US = 5 * 60 * 1_000_000
NEG_INF = float("-inf")


def kth_largest(values, k: int) -> float:
    """The k-th largest value (-inf while there are fewer than k)."""
    top = sorted(values, reverse=True)
    return top[k - 1] if len(top) >= k else NEG_INF


def late_and_applied(arrival, partitions: int, quorum: int = 3, ooo_us: int = B_US, gap_us: int = GAP_US,
                     advances=()):
    """Which clicks the engine applies and which are late, given the publish order.

    arrival: clicks (user, ts_us, event_type[, event_id]) in publish order.  advances: (position,
    partition, target_us): once arrival[:position] is applied, the partition's watermark rises to
    target_us (an idle advance or an operator's; position len(arrival) = after everything).

    Per partition: each user's maximum applied click time; the partition's event-time max is the
    quorum-th largest of those maxima; W = that - ooo, never decreasing.  A click is late iff
    ts + gap < W (W of the clicks before it); a click whose event_id was applied already is a
    retry (dropped) unless it is late.  Returns (applied, late): applied = [(user, ts, type, W)]
    with W the watermark the click met (sessions close by it), late = [(user, ts, type)], both in
    publish order."""
    from shopstream.engine.partitioning import partition_of

    wm = defaultdict(lambda: NEG_INF)
    user_max: dict[int, dict] = defaultdict(dict)
    seen_ids: dict[int, set] = defaultdict(set)
    todo = sorted(advances, key=lambda a: a[0])
    applied, late = [], []

    def advance_until(position):
        while todo and todo[0][0] <= position:
            _, p, target = todo.pop(0)
            wm[p] = max(wm[p], target)

    for position, click in enumerate(arrival):
        advance_until(position)
        user, ts, etype = click[:3]
        event_id = click[3] if len(click) > 3 else None
        p = partition_of(user, partitions)
        if ts + gap_us < wm[p]:
            late.append((user, ts, etype))
            continue
        if event_id is not None:
            if event_id in seen_ids[p]:
                continue
            seen_ids[p].add(event_id)
        applied.append((user, ts, etype, wm[p]))
        maxima = user_max[p]
        maxima[user] = max(maxima.get(user, NEG_INF), ts)
        wm[p] = max(wm[p], kth_largest(maxima.values(), quorum) - ooo_us)
    return applied, late


def streamed_sessions(applied, gap_us: int = GAP_US) -> list[tuple[str, list]]:
    """(user, [(ts, type), ...] sorted) for every session, applying clicks in order: a session closes
    once the watermark is past its last event + gap (it can take no more clicks), an applied click
    joins (and merges) every open session of its user it is within gap of.  applied: (user, ts,
    type, W) as late_and_applied returns them.  Equal to _sessions(applied) when no session closed
    while a click within gap of it was still to come."""
    open_: dict[str, list[list]] = defaultdict(list)
    done = []
    for user, ts, etype, w in applied:
        still = []
        for g in open_[user]:
            if g[-1][0] + gap_us < w:
                done.append((user, g))
            else:
                still.append(g)
        hit = [g for g in still if g[0][0] - gap_us <= ts <= g[-1][0] + gap_us]
        merged = sorted([e for g in hit for e in g] + [(ts, etype)])
        open_[user] = [g for g in still if not any(g is h for h in hit)] + [merged]
    for user, groups in open_.items():
        done += [(user, g) for g in groups]
    return done


def session_records(groups) -> list[dict]:
    out = [{"user_id": user, "start": format_us(g[0][0]), "end": format_us(g[-1][0]),
            "event_count": len(g), "counts": dict(Counter(t for _, t in g))} for user, g in groups]
    return sorted(out, key=lambda s: (s["user_id"], s["start"]))


def rule_alerts(applied_in_order, groups, epm: int = 100, burst: int | None = 100,
                within_us: int = 10_000_000) -> list[tuple[str, str, str, int]]:
    """Every click-rule alert as (rule, subject, window_start, count), sorted.

    events_per_minute: the (epm + 1)-th applied click of a user in a minute, count epm + 1.
    burst: in publish order, the first click of a minute with more than the threshold of the user's
    clicks applied so far in its 60 whole seconds; count = that number.  inhuman_speed: per session (groups as streamed_sessions returns them), a purchase
    less than within_us after the start (count = ms after the start) or a checkout without
    product_view / add_to_cart (count 0); window = the session start.  (The engine decides it on the
    event and retracts it at the close: compare with the users whose signal stands.)"""
    out = []
    per = Counter((e[0], e[1] // US_PER_MINUTE) for e in applied_in_order)
    out += [("events_per_minute", user, format_us(m * US_PER_MINUTE), epm + 1)
            for (user, m), n in per.items() if n > epm]
    if burst is not None:
        seconds: dict = defaultdict(Counter)
        fired = set()
        for e in applied_in_order:
            user, ts = e[0], e[1]
            m, sec = ts // US_PER_MINUTE, ts // 1_000_000
            seconds[user][sec] += 1
            n = sum(c for k, c in seconds[user].items() if sec - 60 < k <= sec)
            if n > burst and (user, m) not in fired:
                fired.add((user, m))
                out.append(("burst", user, format_us(m * US_PER_MINUTE), n))
    for user, g in groups:
        types = Counter(t for _, t in g)
        purchases = [ts for ts, t in g if t == "purchase"]
        if purchases and min(purchases) - g[0][0] < within_us:
            out.append(("inhuman_speed", user, format_us(g[0][0]), (min(purchases) - g[0][0]) // 1000))
        elif types["checkout"] > 0 and types["product_view"] + types["add_to_cart"] == 0:
            out.append(("inhuman_speed", user, format_us(g[0][0]), 0))
    return sorted(out)


def late_records(late) -> list[tuple[str, str]]:
    """(user, timestamp) of late clicks, as the export shows them, sorted."""
    return sorted((user, format_us(ts)) for user, ts, *_ in late)
