"""The engine against the batch reference (tests/reference.py), on fakeredis and a real Redis."""

from __future__ import annotations

import pytest

from shopstream.engine.eventtime import format_us

from .helpers import B, GAP, event, generated_events, run_events, shuffle_within
from .support import check_against_reference, strip

T0 = 1_793_520_000_000_000  # 2026-11-01T06:40:00Z


@pytest.mark.parametrize("consumers", [1, 4])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
async def test_matches_reference(backend, settings, consumers, order):
    events = generated_events(seed=consumers * 10 + len(order))
    arrival = sorted(events, key=lambda e: e[1]) if order == "sorted" else shuffle_within(events, B, seed=3)
    out = await run_events(backend, settings, [event(*e) for e in arrival], consumers=consumers)
    check_against_reference(out, events, arrival if order == "sorted" else None)


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_matches_reference_many_orders(backend, settings, seed):
    events = generated_events(seed=seed, users=15)
    out = await run_events(backend, settings, [event(*e) for e in shuffle_within(events, B, seed)], consumers=2)
    check_against_reference(out, events)


async def test_gap_of_exactly_g_is_one_session_and_one_microsecond_more_splits(backend, settings):
    evs = [("a", T0, "page_view"), ("a", T0 + GAP, "page_view"),            # exactly 30:00.000000
           ("b", T0, "page_view"), ("b", T0 + GAP + 1, "page_view"),        # 30:00.000001
           ("c", T0, "page_view"), ("c", T0 + GAP + 1000, "page_view")]     # 30:00.001
    out = await run_events(backend, settings, [event(*e) for e in evs])
    counts = {(s["user_id"], s["event_count"]) for s in out.sessions}
    assert counts == {("a", 2), ("b", 1), ("c", 1)}
    assert len(out.sessions) == 5


async def test_out_of_order_event_bridging_two_open_sessions_merges_them(backend, settings):
    minute = 60_000_000
    evs = [("a", T0, "page_view"), ("a", T0 + 31 * minute, "add_to_cart"),  # two sessions (gap 31 min)
           ("a", T0 + 15 * minute, "product_view")]                          # arrives last, within G of both
    out = await run_events(backend, settings, [event(*e) for e in evs])
    assert strip(out.sessions) == [{"user_id": "a", "start": format_us(T0), "end": format_us(T0 + 31 * minute),
                                    "event_count": 3,
                                    "counts": {"page_view": 1, "add_to_cart": 1, "product_view": 1}}]


async def test_event_behind_the_watermark_goes_to_the_late_stream(backend, settings):
    minute = 60_000_000
    # same partition for both users keeps one watermark: pick ids that share partition 0 of 4
    from shopstream.engine.partitioning import partition_of
    users = [u for u in (f"u{i}" for i in range(100)) if partition_of(u, settings.partitions) == 0][:4]
    # the partition's clock is the 3rd latest of its users' latest click times (watermark_quorum)
    evs = [(users[0], T0, "page_view"), (users[1], T0 + 100 * minute, "page_view"),
           (users[2], T0 + 100 * minute, "page_view"), (users[3], T0 + 100 * minute, "page_view"),  # W = T0 + 95
           (users[0], T0 + 60 * minute, "page_view")]                                 # 60 + 30 < 95: late
    out = await run_events(backend, settings, [event(*e) for e in evs])
    assert [(l["user_id"], l["timestamp"]) for l in out.late] == [(users[0], format_us(T0 + 60 * minute))]
    assert "late" in out.late[0]["reason"] and users[0] in out.late[0]["record"]
    assert sorted(s["event_count"] for s in out.sessions) == [1, 1, 1, 1]
    assert sum(m["events"] for m in out.minutes) == 4          # late events are not counted


async def test_one_alert_per_user_minute_on_the_101st_event(backend, settings):
    minute = 60_000_000
    evs = [("bot", T0 + i * 200_000, "page_view") for i in range(250)]            # 250 in minute 0
    evs += [("bot", T0 + 2 * minute + i * 100_000, "page_view") for i in range(101)]   # exactly 101
    evs += [("human", T0 + 5 * minute + i * 100_000, "page_view") for i in range(100)]  # exactly 100
    out = await run_events(backend, settings, [event(*e) for e in evs])
    assert [(a["user_id"], a["window_start"], a["count"]) for a in out.alerts if a["rule"] == "events_per_minute"] == [
        ("bot", format_us(T0), 101), ("bot", format_us(T0 + 2 * minute), 101)]


async def test_alert_is_published_on_the_channel(real, settings):
    import json
    from shopstream.engine.keys import Keys
    pubsub = real.sync.pubsub()
    pubsub.subscribe(Keys(settings.namespace, settings.partitions).channel(settings.alerts_channel))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    await run_events(real, settings, [event("bot", T0 + i * 1000) for i in range(101)], flush=False)
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["type"] == "message"
    alert = json.loads(message["data"])
    assert (alert["rule"], alert["user_id"], alert["count"]) == ("events_per_minute", "bot", 101)
    assert alert["window_start_ms"] == (T0 // 60_000_000) * 60_000


async def test_open_minute_is_readable_before_it_is_final(backend, settings):
    out = await run_events(backend, settings, [event("a", T0), event("b", T0 + 1)], flush=False)
    assert out.minutes == [] and out.sessions == []
    from shopstream.engine.keys import Keys
    from shopstream.engine.partitioning import partition_of
    m = T0 // 60_000_000
    keys = Keys(settings.namespace, settings.partitions)
    parts = {partition_of(user, settings.partitions) for user in ("a", "b")}
    assert sum(backend.sync.pfcount(keys.partition(p).hll(m)) for p in parts) == 2
    assert sum(int(backend.sync.get(keys.partition(p).count(m)) or 0) for p in parts) == 2


async def test_third_party_export_shape(backend, settings):
    """No optional fields, digit-only ids, unknown event types, µs and warehouse-style timestamps
    (ids are strings: a JSON number as user_id is bad input, tests/test_ids.py)."""
    import msgspec
    rows, events = [], []
    for i in range(400):
        user, ts = 1000 + i % 7, T0 + i * 17_000_123          # µs steps, not whole ms
        etype = ["view", "cart", "remove_from_cart", "purchase"][i % 4]
        stamp = [ts, format_us(ts)[:-1].replace("T", " ") + f"{ts % 1000:03d} UTC", ts // 1000][i % 3]
        if i % 3 == 2:
            ts = ts // 1000 * 1000                               # epoch ms loses the µs
        rows.append(msgspec.json.encode({"user_id": str(user), "event_type": etype, "timestamp": stamp}))
        events.append((str(user), ts, etype))
    out = await run_events(backend, settings, rows)
    check_against_reference(out, events)
