"""Hostile input: the engine's input is written by the people it watches.

Each test names, in its docstring, the invariant it protects.  The reference for what the engine
must output is tests/reference.py (the streaming contract: watermark quorum, lateness, retries).
"""

from __future__ import annotations

import random

import pytest

from shopstream.engine import control, export
from shopstream.engine.eventtime import US_PER_MINUTE, format_us
from shopstream.engine.keys import PROFILE, STATE, Keys
from shopstream.engine.partitioning import partition_of
from shopstream.engine.pipeline import partition_counters
from shopstream.engine.producer import publish, replay

from . import reference as ref
from .helpers import B, by_rule, click, consume_all, run_events, shuffle_within

T0 = 1_793_520_000_000_000            # 2026-11-01T08:00:00Z
MIN = US_PER_MINUTE
SEC = 1_000_000
DAY = 86_400 * SEC
MAX_DISTINCT = 1024                   # a profile keeps far fewer distinct values than an attacker sends


def same_partition(first: str, n: int, partitions: int, prefix: str = "o") -> list[str]:
    """first and n - 1 more user ids of first's partition."""
    p = partition_of(first, partitions)
    return [first] + [u for u in (f"{prefix}{i}" for i in range(10_000)) if partition_of(u, partitions) == p][:n - 1]


async def partition_state(backend, settings, user: str) -> dict[str, int]:
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(user, settings.partitions))
    raw = await backend.aio.hgetall(part.key(STATE))
    return {k.decode(): int(v) for k, v in raw.items() if v.lstrip(b"-").isdigit()}


# -- per-user cardinality bombs -----------------------------------------------------------------

BOMBS = {                                   # kind -> the i-th click's (event_type, extra fields)
    "category": lambda i: ("product_view", {"product_id": f"not-in-catalog-{i}", "properties": {"category": f"cat-{i}"}}),
    "device": lambda i: ("page_view", {"device": f"device-{i}"}),
    "country": lambda i: ("page_view", {"country": f"C{i}"}),
}


@pytest.mark.parametrize("kind", list(BOMBS))
async def test_cardinality_bomb_of_one_user_does_not_freeze_the_partition(backend, settings, kind):
    """Invariant: no input can make a Lua call fail after its first write.  4,100 clicks of one user,
    each with a distinct category (products not in the catalog) / device / country: the run completes
    without error, the partition's applied counter and watermark keep advancing for other users,
    the attacker's session is emitted and folded into a profile whose size stays bounded."""
    bomb, *others = same_partition("bomb", 4, settings.partitions)
    raws = [click(bomb, T0 + i * 50_000, etype, event_id=f"b{i}", **extra)
            for i, (etype, extra) in enumerate(BOMBS[kind](i) for i in range(4_100))]
    # other users an hour later: the watermark passes the bomb's session, which closes in the apply
    raws += [click(u, T0 + (60 + j) * MIN) for j in range(3) for u in others]
    raws += [click(u, T0 + 120 * MIN) for u in others]
    out = await run_events(backend, settings, raws, flush=False)
    state = await partition_state(backend, settings, bomb)
    assert state.get("applied") == len(raws), state
    assert state.get("wm") == T0 + 120 * MIN - B, state          # the others moved it: not frozen
    assert out.dlq == [] and out.late == []
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert sorted((s["user_id"], s["event_count"]) for s in out.sessions) == sorted(
        [(bomb, 4_100)] + [(u, n) for u in others for n in (3, 1)])     # 62 -> 120 min: a gap over G
    profile = await export.read_profile(backend.aio, settings, bomb)
    assert profile is not None and profile["sessions"] == 1 and profile["events"] == 4_100
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(bomb, settings.partitions))
    fields = await backend.aio.hlen(part.key(PROFILE) + bomb)
    assert fields <= MAX_DISTINCT, f"profile of {bomb} holds {fields} fields"


async def test_transaction_bomb_of_distinct_cards_ips_and_countries(backend, settings):
    """Invariant: no input can make a Lua call fail after its first write; every per-user set of
    distinct values is capped.  4,100 completed transactions of one user within one card window, each
    with its own card, IP and country: the run completes, every transaction is applied once, the
    partition keeps advancing for other users, and the user's profile, card set and the alert's
    evidence stay bounded."""
    import msgspec
    from shopstream.engine.keys import TX, UCARDS

    bomb, *others = same_partition("tx-bomb", 4, settings.partitions)
    txs = [msgspec.json.encode({"transaction_id": f"t{i}", "user_id": bomb, "amount": "1.00", "currency": "USD",
                                "status": "completed", "card_fingerprint": f"card-{i}", "ip": f"10.{i // 250}.{i % 250}.1",
                                "country": f"K{i}", "timestamp": format_us(T0 + i * 100_000)}) for i in range(4_100)]
    clicks = [click(u, T0 + 60 * MIN + j * MIN) for j in range(3) for u in others]
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, txs, settings, TX)
    publish(backend.sync, clicks, settings)
    await consume_all(backend, settings)
    state = await partition_state(backend, settings, bomb)
    assert state.get("applied") == len(txs) + len(clicks), state
    assert state.get("wm") == T0 + 62 * MIN - B, state
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert out.dlq == [] and sorted(s["user_id"] for s in out.sessions) == sorted(others)
    profile = await export.read_profile(backend.aio, settings, bomb)
    assert profile is not None and profile["orders"] == 4_100
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(bomb, settings.partitions))
    assert await backend.aio.hlen(part.key(PROFILE) + bomb) <= MAX_DISTINCT
    assert await backend.aio.zcard(f"{part.key(UCARDS)}{bomb}") <= MAX_DISTINCT
    card_alerts = [a for a in out.alerts if a["rule"] == "card_testing" and a["subject"] == bomb]
    assert len(card_alerts) == 2                                      # one per horizon (1 h, 24 h)
    assert all(len(msgspec.json.encode(a["evidence"])) < 64 * 1024 for a in card_alerts)


# -- skewed clocks ------------------------------------------------------------------------------

def normal_traffic(users: list[str], seed: int, t0: int = T0) -> list[tuple[str, int, str]]:
    """Two hours of clicks of each user (a burst of 120 in one minute for the first), in arrival order
    within B, and one straggler of the last user delayed past B + G (late in every run)."""
    rng = random.Random(seed)
    events = []
    for k, user in enumerate(users):
        ts = t0 + rng.randrange(10 * MIN)
        while ts < t0 + 120 * MIN:
            events.append((user, ts, rng.choice(["page_view", "product_view", "add_to_cart", "purchase"])))
            ts += rng.randrange(10 * SEC, 8 * MIN)
        if k == 0:
            events += [(user, t0 + 30 * MIN + i * 400_000, "page_view") for i in range(120)]
    arrival = shuffle_within(events, B, seed)
    arrival.append((users[-1], t0 + 60 * MIN, "page_view"))      # W is ~t0 + 115 min by now: late
    return arrival


def without(out, user: str, before_us: int = T0 + DAY) -> dict:
    return {"sessions": [s for s in out.sessions if s["user_id"] != user],
            "alerts": [(a["rule"], a["subject"], a["window_start"], a["count"]) for a in out.alerts
                       if a["user_id"] != user],
            "late": [(r["user_id"], r["timestamp"]) for r in out.late if r["user_id"] != user],
            "minutes": [m for m in out.minutes if m["minute"] < format_us(before_us)]}


@pytest.mark.parametrize("skewed", [1, 10, 100])
@pytest.mark.parametrize("mode", ["replay", "live"])
async def test_a_skewed_clock_changes_nothing_for_other_users(backend, settings, skewed, mode):
    """Invariant: one client's clock, however wrong, cannot make other users late.  User X sends
    `skewed` clicks dated 18 days after everyone else (replay: a file of last month, so in the past of
    the wall clock and valid) or 6 hours ahead of the wall clock (live: within max_future_ms, so
    valid); then four other users of the same partition send normal traffic.  Their sessions,
    minutes, alerts and late set are exactly those of a run without X (default watermark quorum)."""
    import time
    x, *others = same_partition("X", 5, settings.partitions)
    if mode == "replay":
        t0, ahead = T0, 18 * DAY
    else:                                   # two hours of traffic ending now; X's clock 6 h ahead
        t0 = (time.time_ns() // 1000 - 125 * MIN) // MIN * MIN
        ahead = 125 * MIN + 6 * 3600 * SEC
    traffic = normal_traffic(others, seed=skewed, t0=t0)
    skew = [click(x, t0 + ahead + i * SEC) for i in range(skewed)]
    plain = [click(u, ts, t) for u, ts, t in traffic]
    with_x = without(await run_events(backend, settings, skew + plain), x, t0 + 3 * 3600 * SEC)
    backend.sync.flushall()
    baseline = await run_events(backend, settings, plain)
    assert out_ok(baseline) and with_x == without(baseline, x, t0 + 3 * 3600 * SEC)
    # and the baseline is what the contract says: nothing vacuous (sessions exist, one click is late)
    applied, late = ref.late_and_applied(traffic, settings.partitions)
    assert without(baseline, x)["late"] == ref.late_records(late) and len(late) == 1
    assert len(baseline.sessions) == len(ref.streamed_sessions(applied)) > 0


def out_ok(out) -> bool:
    return out.dlq == [] and len(out.sessions) > 0


# -- batch-size dependence ------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1000, 1])
async def test_minute_rules_do_not_depend_on_the_batch_size(backend, settings, batch_size):
    """Invariant: every alert is a function of event times and ids, not of how the input was batched.
    Users u1, u3, u8 share partition 2 of 4 (three users: the watermark quorum is met).  100 clicks
    of u1 in minute 10:00, then u3 and u8 at 10:08, u1 at 10:07 (W = 10:02), then u1 at 10:00:55
    (not late: 10:00:55 + G > W).  The minute holds 101 clicks of u1: events_per_minute and burst
    fire with any batch size (reported: with batch size 1 the minute's count was dropped at
    W >= m + 2 min and neither fired)."""
    u1, u3, u8 = "u1", "u3", "u8"
    assert {partition_of(u, 4) for u in (u1, u3, u8)} == {2} and settings.partitions == 4
    t10 = T0 + 120 * MIN                                   # 2026-11-01T10:00:00Z
    arrival = [(u1, t10 + i * 500_000, "page_view") for i in range(100)]
    arrival += [(u3, t10 + 8 * MIN, "page_view"), (u8, t10 + 8 * MIN, "page_view"),
                (u1, t10 + 7 * MIN, "page_view"), (u1, t10 + 55 * SEC, "page_view")]
    out = await run_events(backend, settings.replace(batch_size=batch_size), [click(*e) for e in arrival])
    applied, late = ref.late_and_applied(arrival, settings.partitions)
    assert late == [] and out.late == []
    clicks = [e[:3] for e in applied]
    want = [a for a in ref.rule_alerts(clicks, ref.streamed_sessions(applied)) if a[0] != "inhuman_speed"]
    assert want == [("burst", u1, format_us(t10), 101), ("events_per_minute", u1, format_us(t10), 101)]
    got = sorted((a["rule"], a["subject"], a["window_start"], a["count"]) for a in out.alerts
                 if a["rule"] in ("burst", "events_per_minute"))
    assert got == want
    assert out.minutes[0] == {"minute": format_us(t10), "events": 101, "unique_users": 1}


# -- huge batches, retried batches ----------------------------------------------------------------

async def test_a_huge_batch_of_one_user_is_applied_in_one_call(backend, settings):
    """Invariant: no input can make a Lua call fail (stack, unpack or size limits of one call): 5,000
    clicks of one user, each with its own event_id, in one script call, within one minute."""
    raws = [click("whale", T0 + i * 10_000, event_id=f"w{i}") for i in range(5_000)]
    out = await run_events(backend, settings.replace(batch_size=5_000), raws)
    assert out.dlq == [] and out.late == []
    assert [(s["user_id"], s["event_count"]) for s in out.sessions] == [("whale", 5_000)]
    assert out.minutes == [{"minute": format_us(T0), "events": 5_000, "unique_users": 1}]
    assert by_rule(out.alerts) == [(format_us(T0), "whale")]
    assert (await partition_state(backend, settings, "whale")).get("applied") == 5_000


@pytest.mark.parametrize("when", ["after", "together"])
async def test_a_retried_batch_of_1000_events_counts_once(backend, settings, when):
    """Invariant: a producer retry (the same event_id published again) counts once as long as the
    event would not be late.  1,000 clicks of one user over 8 minutes, published twice (the whole
    batch retried after it was consumed, or both copies before): every count is the count of one copy."""
    user = "retry"
    raws = [click(user, T0 + i * 480_000, event_id=f"r{i}") for i in range(1_000)]
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, raws, settings)
    if when == "after":
        await consume_all(backend, settings)
    publish(backend.sync, raws, settings)                  # the producer's retry of the whole batch
    await consume_all(backend, settings)
    state = await partition_state(backend, settings, user)
    assert (state.get("applied"), state.get("duplicates")) == (1_000, 1_000)
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert [(s["user_id"], s["event_count"]) for s in out.sessions] == [(user, 1_000)]
    assert sum(m["events"] for m in out.minutes) == 1_000 and out.late == []
    events = [(user, T0 + i * 480_000, "page_view") for i in range(1_000)]
    assert by_rule(out.alerts) == ref.alerts(events)                   # 125 a minute: each minute once
    assert by_rule(out.alerts, "burst") == ref.bursts(events)


# -- ids designed to collide with key patterns ------------------------------------------------------

COLLIDING = ["b", "a:b", "*", "b*", "[b]", "{0}", "{1}b", "user:b", "fired:burst:0:user:b", "b\\", "?", " b", "B"]


async def test_ids_shaped_like_key_patterns_stay_separate_users(backend, settings):
    """Invariant: identifiers are data, byte-exact; an id shaped like a key, a glob or a hash tag
    cannot reach another user's state, alerts or profile.  Each of these users gets exactly its own
    sessions, alerts and profile."""
    events = []
    for k, user in enumerate(COLLIDING):
        base = T0 + k * 3 * MIN
        events += [(user, base + i * 300_000, "page_view") for i in range(101 + k)]   # each one bursts
        events += [(user, base + 2 * MIN, "checkout")]
    out = await run_events(backend, settings, [click(*e) for e in events])
    assert [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")} for s in out.sessions] == \
        ref.sessions(events)
    assert by_rule(out.alerts) == ref.alerts(events)
    assert by_rule(out.alerts, "inhuman_speed") == ref.inhuman_speed(events)
    assert sorted(a["subject"] for a in out.alerts if a["rule"] == "events_per_minute") == sorted(COLLIDING)
    assert sorted(p["user_id"] for p in out.profiles) == sorted(COLLIDING)
    assert all(p["events"] == 102 + k for k, u in enumerate(COLLIDING) for p in out.profiles if p["user_id"] == u)


# -- operator commands ---------------------------------------------------------------------------

async def test_input_after_a_flush_is_applied_or_refused_never_silently_late(backend, settings, tmp_path):
    """Invariant: operator commands either do what they say or refuse with a clear error.  After
    `flush` (end of input), a replay into the namespace is refused with an error naming the flush,
    or its clicks are applied; a click published anyway (the publish API) is applied or sent to the
    late stream with the reason "input ended" - never silently late, as if it came from a slow device."""
    await run_events(backend, settings, [click("a", T0 + i * SEC) for i in range(5)])
    before = await partition_counters(backend.aio, settings)
    more = [click(u, T0 + 60 * MIN + i * SEC) for i in range(5) for u in ("a", "b", "c")]
    path = tmp_path / "more.jsonl"
    path.write_bytes(b"\n".join(more) + b"\n")
    published = 0
    try:
        published += replay(backend.sync, path, settings).get("clicks", 0)
    except Exception as exc:                                  # refused: the error must say why
        assert "flush" in str(exc).lower(), f"unclear refusal: {exc!r}"
    published += publish(backend.sync, more, settings)
    await consume_all(backend, settings)
    after = await partition_counters(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    late = [r for r in out.late if r["timestamp"] >= format_us(T0 + 60 * MIN)]
    assert [r["reason"] for r in late if "input ended" not in r["reason"]] == []
    assert (after["applied"] - before["applied"]) + len(late) == published


async def test_failed_logins_from_a_thousand_ips_forward_one_record_a_session(backend, settings):
    """Invariant: no input makes forwarding grow without bound: a user failing to log in from 1,000
    IPs in one session sends the credential-stuffing rule one record (one lgz: key), not 1,000."""
    clicks = [click("stuffer", T0 + i * 100_000, "login", ip=f"10.9.{i // 250}.{i % 250}",
                    properties={"result": "failed"}) for i in range(1_000)]
    out = await run_events(backend, settings, clicks)
    assert out.dlq == []
    keys = [k async for k in backend.aio.scan_iter(match="*:lgz:*", count=1000)]
    assert len(keys) == 1, keys


async def test_failed_logins_from_a_thousand_ips_ranges_and_agents_forward_once_a_session(backend, settings):
    """Invariant: no input makes forwarding grow without bound: a user failing to log in 1,000 times
    in one session, each time from another IP in another /24 with another user agent, sends the
    credential-stuffing rules one record per subject kind (one lgz:, one lgdz:, one lgnz: key)."""
    clicks = [click("rotator", T0 + i * 100_000, "login", ip=f"10.{i // 250}.{i % 250}.9", device="web",
                    user_agent=f"Mozilla/5.0 Build/{i}", properties={"result": "failed"}) for i in range(1_000)]
    out = await run_events(backend, settings, clicks)
    assert out.dlq == []
    for kind in ("lgz", "lgdz", "lgnz"):
        keys = [k async for k in backend.aio.scan_iter(match=f"*:{kind}:*", count=1000)]
        assert len(keys) == 1, (kind, keys)


async def test_a_thousand_cards_from_a_thousand_ranges_make_a_bounded_card_ring_state(backend, settings):
    """Invariant: a user's card-ring records are bounded whatever the input: 1,000 payments of one
    user, each with a new card from another /24, tell at most 64 ranges (the user's card set is
    capped at 64 and a capped user forwards no more)."""
    import msgspec
    from shopstream.engine.keys import TX

    txs = [msgspec.json.encode({"transaction_id": f"t{i}", "user_id": "ringer", "amount": "1.00", "currency": "USD",
                                "status": "completed", "card_fingerprint": f"card-{i}",
                                "ip": f"10.{i // 250}.{i % 250}.1", "country": "US",
                                "timestamp": format_us(T0 + i * 100_000)}) for i in range(1_000)]
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, txs, settings, TX)
    await consume_all(backend, settings)
    out = await export.collect(backend.aio, settings)
    assert out.dlq == []
    keys = [k async for k in backend.aio.scan_iter(match="*:rngz:*", count=1000)]
    assert 1 <= len(keys) <= 64, len(keys)


async def test_clicks_beyond_the_record_cap_are_still_counted_in_their_minute(backend, settings):
    """A user keeps at most MAX_IDS (4,096) click records; the clicks beyond them are not remembered
    for retries, but each still counts in its minute (rule 1): a flood past the cap is no blind spot."""
    import msgspec
    raws = [click("cap", T0 + m * MIN + i * 590_000, event_id=f"c{m}-{i}") for m in range(41) for i in range(100)]
    raws += [click("cap", T0 + 41 * MIN + i * 590_000, event_id=f"x{i}") for i in range(101)]
    out = await run_events(backend, settings, raws, flush=False)
    base = T0 // MIN
    assert by_rule(out.alerts) == [(format_us((base + 41) * MIN), "cap")]       # 100 a minute: none before
    part = Keys(settings.namespace, settings.partitions).partition(partition_of("cap", settings.partitions))
    state = msgspec.msgpack.decode(await backend.aio.get(part.user("cap")))
    assert state["o"] == [base + 40, 4, base + 41, 101] or state["o"] == [base + 41, 101, base + 40, 4]
    assert sum(len(r) for r in state["i"][1::2]) == 4096 * 9
