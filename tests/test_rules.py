"""Fraud rules, risk score and profiles (issue 6): a table of cases per rule, at the threshold
edges, on fakeredis and a real Redis; then the planted patterns of generated data end to end."""

from __future__ import annotations

import os

import pytest

from shopstream.consumers.consumer import Consumer
from shopstream.engine import control, export
from shopstream.engine.eventtime import format_us
from shopstream.engine.keys import SUPPORT, TX, Keys
from shopstream.engine.partitioning import partition_of
from shopstream.engine.producer import publish

from .helpers import consume_all, event, format_us_us
from .support import HOUR, MIN, REPO, S, T0, T_HOUR, read_jsonl, shopstream, tx

async def run(backend, settings, clicks=(), txs=(), tickets=(), flush=True):
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, list(clicks), settings)
    publish(backend.sync, list(txs), settings, TX)
    publish(backend.sync, list(tickets), settings, SUPPORT)
    await consume_all(backend, settings)
    if flush:
        await control.flush(backend.aio, settings)
    return await export.collect(backend.aio, settings)


def fired(out, rule: str) -> list[str]:
    """Subjects of the rule's alerts (not the records linking users to a subject alert)."""
    return sorted(a["subject"] for a in out.alerts if a["rule"] == rule and a["evidence"] != {"role": "member"})


def risky(out) -> list[str]:
    return sorted(p["user_id"] for p in out.profiles if p.get("risk_score", 0) > 0)


# -- burst: sliding 60 s, two-bucket estimate -----------------------------------------------------
def burst_case(prev: int, prev_at: float, cur: int, cur_at: float) -> list[bytes]:
    """prev events from second prev_at of minute 0 and cur events from second cur_at of minute 1,
    10 ms apart."""
    evs = [event("b", T0 + int(prev_at * S) + i * 10_000) for i in range(prev)]
    return evs + [event("b", T0 + MIN + int(cur_at * S) + i * 10_000) for i in range(cur)]


@pytest.mark.parametrize("prev, prev_at, cur, cur_at, fires", [
    (60, 59.0, 41, 0.0, True),     # 101 events within 1.4 s across the minute boundary: per-minute rule misses it
    (60, 59.0, 40, 0.0, False),    # 100 events: at the threshold, not over
    (60, 0.0, 41, 50.0, False),    # estimate 41 + 60 x 10/60 = 51
    (0, 0.0, 101, 0.0, True),      # 101 in one minute: both rules
    (60, 1.0, 50, 5.0, True),      # the estimate's documented error: 60 x 55/60 + 50 = 105, true count 50
])
async def test_burst(backend, settings, prev, prev_at, cur, cur_at, fires):
    out = await run(backend, settings, burst_case(prev, prev_at, cur, cur_at))
    assert fired(out, "burst") == (["b"] if fires else [])
    assert fired(out, "events_per_minute") == (["b"] if max(prev, cur) > 100 else [])


# -- failed payments: >= 3 failed transactions within any 10 minutes --------------------------------
@pytest.mark.parametrize("offsets_min, statuses, fires", [
    ([0, 5, 10], "fff", True),              # exactly 10 minutes from first to last: inside the window
    ([0, 5, 10.00001], "fff", False),        # 10 min + 600 µs
    ([0, 1], "ff", False),
    ([0, 1, 2], "ffc", False),               # a completed payment does not count
    ([10, 0, 5], "fff", True),               # out of order: the window is in event time
    ([0, 30, 31, 32], "ffff", True),         # the first failure is long gone; the last three are close
])
async def test_failed_payments(backend, settings, offsets_min, statuses, fires):
    status = {"f": "failed", "c": "completed"}
    txs = [tx("u", T0 + int(m * MIN), status[s]) for m, s in zip(offsets_min, statuses)]
    out = await run(backend, settings, txs=txs)
    assert fired(out, "failed_payments") == (["u"] if fires else [])
    assert risky(out) == (["u"] if fires else [])


# -- card testing: >= 3 cards per user, or >= 3 users per card, in one clock hour -------------------


@pytest.mark.parametrize("cards, offsets_min, fires", [
    (["A", "B", "C"], [1, 2, 3], True),
    (["A", "B", "A", "B"], [1, 2, 3, 4], False),      # two distinct cards
    (["A", "B", "C"], [58, 59, 61], False),           # tumbling hour: C is in the next one
])
async def test_cards_per_user(backend, settings, cards, offsets_min, fires):
    txs = [tx("u", T_HOUR + m * MIN, "completed", card=c) for c, m in zip(cards, offsets_min)]
    out = await run(backend, settings, txs=txs)
    assert [(a["subject_kind"], a["subject"]) for a in out.alerts if a["rule"] == "card_testing"] == \
        ([("user", "u")] if fires else [])


@pytest.mark.parametrize("users, fires", [(["u1", "u2", "u3"], True), (["u1", "u2"], False),
                                          (["u1", "u1", "u2"], False)])
async def test_users_per_card(backend, settings, users, fires):
    txs = [tx(u, T_HOUR + i * MIN, "completed", card="shared", ip=f"10.0.0.{i}") for i, u in enumerate(users)]
    out = await run(backend, settings, txs=txs)
    alerts = [(a["subject_kind"], a["subject"], a["user_id"]) for a in out.alerts if a["rule"] == "card_testing"]
    # the alert names no user; one member record per user links them to it
    assert sorted(alerts) == ([("card", "shared", u) for u in ("", "u1", "u2", "u3")] if fires else [])
    assert risky(out) == (sorted(set(users)) if fires else [])     # every user of the card, via the rekey stream


# -- many users behind one IP in a tumbling 10-minute window (> 10; a set, a HyperLogLog beyond 64) --
@pytest.mark.parametrize("n, spacing, split_window, fires", [
    (11, S, False, True), (10, S, False, False), (11, S, True, False),
    (11, 50 * S, False, True),            # 11 users over 8 min 20 s of one window
    (11, 61 * S, False, False),           # ... over 10 min 10 s: two windows
])
async def test_ip_users(backend, settings, n, spacing, split_window, fires):
    base = T0 + 10 * MIN - 6 * spacing if split_window else T0 + 5 * S   # T0 starts a window; split: 6 + 5
    farm = [(base + i * spacing + again, f"farm{i}") for i in range(n) for again in (0, spacing // 2)]  # counted once
    clicks = [event(user, ts, ip="198.51.100.7") for ts, user in sorted(farm)]
    clicks += [event(f"solo{i}", T0 + i * S, ip=f"10.1.1.{i}") for i in range(20)]
    out = await run(backend, settings, clicks)
    assert fired(out, "ip_users") == (["198.51.100.7"] if fires else [])
    assert risky(out) == (sorted(f"farm{i}" for i in range(n)) if fires else [])


# -- inhuman speed (at session close) ---------------------------------------------------------------
@pytest.mark.parametrize("types_at, fires", [
    ([("page_view", 0), ("add_to_cart", 2), ("checkout", 5), ("purchase", 9.999)], True),
    ([("page_view", 0), ("add_to_cart", 2), ("checkout", 5), ("purchase", 10)], False),
    ([("page_view", 0), ("checkout", 60), ("purchase", 90)], True),          # no product interaction
    ([("page_view", 0), ("add_to_cart", 30), ("checkout", 60)], False),      # quick-add from a listing
    ([("page_view", 0), ("product_view", 30), ("checkout", 60)], False),
])
async def test_inhuman_speed(backend, settings, types_at, fires):
    out = await run(backend, settings, [event("s", T0 + int(at * S), etype) for etype, at in types_at])
    assert fired(out, "inhuman_speed") == (["s"] if fires else [])


# -- high-value purchase from a new country ---------------------------------------------------------
@pytest.mark.parametrize("amount, status, country_seen_min_before, user_seen_min_before, fires", [
    ("500.00", "completed", 29, 90, True),
    ("499.99", "completed", 29, 90, False),      # below the amount
    ("500.00", "completed", 31, 90, False),      # the country is not new any more
    ("500.00", "completed", 29, 59, False),      # a new customer: no history to compare with
    ("500.00", "failed", 29, 90, False),
    ("900.00", "completed", None, 90, True),     # a country never seen before
])
async def test_new_country_purchase(backend, settings, amount, status, country_seen_min_before,
                                    user_seen_min_before, fires):
    at = T0 + 3 * HOUR
    clicks = [event("a", at - user_seen_min_before * MIN, country="US")]
    if country_seen_min_before is not None:
        clicks.append(event("a", at - country_seen_min_before * MIN, country="RO"))
    out = await run(backend, settings, clicks, [tx("a", at, status, amount, country="RO")])
    assert fired(out, "new_country_purchase") == (["a"] if fires else [])


# -- risk score, profile, rules file ----------------------------------------------------------------
async def test_risk_score_decays_with_a_half_life(backend, settings):
    """Two high alerts (50 each) an hour apart (the default half-life): 50 x 1/2 + 50 = 75."""
    txs = [tx("r", T0 + m * MIN) for m in (0, 1, 2)] + [tx("r", T0 + HOUR + m * MIN, tid=f"x{m}") for m in (0, 1, 2)]
    out = await run(backend, settings, txs=txs)
    assert len([a for a in out.alerts if a["rule"] == "failed_payments"]) == 2
    (profile,) = out.profiles
    assert profile["risk_score"] == 75.0 and profile["last_alert"].startswith("failed_payments ")


@pytest.mark.parametrize("closed", [True, False])
async def test_profile_unifies_clicks_transactions_and_tickets(backend, settings, closed):
    """Clicks reach the stored profile when their session closes; before that, readers (export,
    `shopstream profile`) see them folded in from the open session."""
    clicks = [event("p", T0, "page_view", device="ios", country="de"),
              event("p", T0 + S, "product_view", device="web", country="DE", product_id="P1",
                    properties={"category": "books"})]
    txs = [tx("p", T0 + 2 * S, "completed", "12.50", country="DE"), tx("p", T0 + 3 * S, "failed", "1.00"),
           tx("p", T0 + 2 * S, "completed", "12.50", country="DE")]                     # a producer retry
    tickets = [{"ticket_id": "k1", "user_id": "p", "status": "open", "created_at": format_us(T0 + 4 * S)},
               {"ticket_id": "k2", "user_id": "p", "status": "open", "created_at": format_us(T0 + 5 * S)},
               {"ticket_id": "k1", "user_id": "p", "status": "resolved", "created_at": format_us(T0 + 4 * S),
                "updated_at": format_us(T0 + 9 * S)}]
    out = await run(backend, settings, clicks, txs, tickets, flush=closed)
    (profile,) = out.profiles
    assert profile == {
        "user_id": "p", "first_seen": format_us_us(T0), "last_seen": format_us_us(T0 + 9 * S), "events": 2,
        "device:ios": format_us_us(T0), "device:web": format_us_us(T0 + S),
        "country:DE": format_us_us(T0), "country:US": format_us_us(T0 + 3 * S), "category:books": 1,
        "orders": 1, "spend_minor": 1250, "currency": "USD", "failed_payments": 1, "tickets": 2, "open_tickets": 1,
        **({"sessions": 1} if closed else {})}
    stored = backend.sync.hgetall(Keys("ss", settings.partitions).partition(partition_of("p", settings.partitions))
                                  .profile("p"))
    assert (b"events" in stored) == closed and (b"category:books" in stored) == closed
    assert [s["categories"] for s in out.sessions] == ([{"books": 1}] if closed else [])


async def test_a_transaction_is_applied_when_the_users_session_state_is_unreadable(backend, settings):
    """The state only adds the open sessions' first-seen times to the transaction rules: a user
    whose state key is broken has their clicks dead-lettered, their transactions still count."""
    part = Keys("ss", settings.partitions).partition(partition_of("z", settings.partitions))
    backend.sync.hset(part.user("z"), "not", "state")
    out = await run(backend, settings, [event("z", T0)], [tx("z", T0 + S, "completed", "5.00")])
    assert [d["stream"].rsplit(":", 1)[1] for d in out.dlq] == ["clicks"]
    (profile,) = out.profiles
    assert profile["orders"] == 1 and profile["spend_minor"] == 500


async def test_rules_file_is_reloaded_without_a_restart(backend, settings, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("[events_per_minute]\nthreshold = 5\n[burst]\nenabled = false\n")
    settings = settings.replace(rules_file=str(rules))
    await control.ensure_groups(backend.aio, settings)
    first = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    publish(backend.sync, [event("x", T0 + i * S) for i in range(6)], settings)
    await first.run()                                        # 6 > 5: an alert
    rules.write_text("[events_per_minute]\nthreshold = 7\n[burst]\nenabled = false\n")
    os.utime(rules, (os.stat(rules).st_atime, os.stat(rules).st_mtime + 5))
    second = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    second.rules = first.rules                               # one process's watcher, as in a long run
    publish(backend.sync, [event("x", T0 + 2 * MIN + i * S) for i in range(7)], settings)
    await second.run()                                       # 7 is not over 7: no alert
    assert first.rules.reloads == 1
    out = await export.collect(backend.aio, settings)
    assert [(a["window_start"], a["count"]) for a in out.alerts] == [(format_us(T0), 6)]


async def test_a_bad_rules_file_keeps_the_last_good_rules(backend, settings, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("[events_per_minute]\nthreshold = 5\n")
    settings = settings.replace(rules_file=str(rules))
    consumer = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    first = consumer.rules.current()
    rules.write_text("[events_per_minute]\nthreshold = 'many'\n")
    os.utime(rules, (os.stat(rules).st_atime, os.stat(rules).st_mtime + 5))
    assert consumer.rules.current() == first and consumer.rules.reloads == 0
    rules.write_text("[events_per_minute]\nthreshold = 9\n")
    os.utime(rules, (os.stat(rules).st_atime, os.stat(rules).st_mtime + 10))
    assert b'"epm":9' in consumer.rules.current() and consumer.rules.reloads == 1


# -- the planted patterns, end to end ---------------------------------------------------------------


@pytest.mark.parametrize("folder", ["committed", "seed-99"])
def test_every_planted_fraudster_is_caught_and_no_clean_customer_flagged(folder, real, tmp_path):
    from shopstream.engine.tools.generate import GeneratorConfig, write_all
    from shopstream.engine.report import truth_check

    data = REPO / "data"
    if folder == "seed-99":
        data = tmp_path / "data"
        write_all(data, GeneratorConfig(seed=99, users=300, hours=3.0))
    shopstream("run", str(data), "--out", str(tmp_path / "out"), "--consumers", "2", env={"REDIS_URL": real.url})
    shown = shopstream("profile", "ct001", env={"REDIS_URL": real.url})
    assert "lives in partition" in shown and "risk_score" in shown and "failed_payments" in shown
    profiles = read_jsonl(tmp_path / "out" / "profiles.jsonl")
    flagged = {p["user_id"] for p in profiles if p.get("risk_score", 0) > 0}
    check = truth_check(flagged, data / "fraud_truth.jsonl")
    print(f"{folder}: precision {check['precision']:.3f} recall {check['recall']:.3f} "
          f"({check['caught']}/{check['planted']} caught, false alarms {check['false_alarms']})")
    assert check["missed"] == [] and check["false_alarms"] == []
    alerts = read_jsonl(tmp_path / "out" / "alerts.jsonl")
    patterns = check["patterns"]
    expected_rules = {"bot": {"events_per_minute", "burst"}, "card_testing": {"failed_payments", "card_testing"},
                      "card_sharing": {"card_testing"}, "account_takeover": {"new_country_purchase"},
                      "ip_farm": {"ip_users"}, "inhuman_speed": {"inhuman_speed"}}
    for pattern, rules in expected_rules.items():
        users = {u for u, p in patterns.items() if p == pattern}
        raised = {a["rule"] for a in alerts if a["user_id"] in users}     # subject alerts: the member records
        assert rules <= raised, pattern


# -- every field of an alert is a function of event times and ids -----------------------------------
def mixed_input():
    """An IP farm and a shared card whose users live in every partition, a bot, failed payments."""
    farm = [event(f"farm-{i}", T0 + i * S, ip="198.51.100.7") for i in range(14)]
    bot = [event("bot", T0 + MIN + i * 100_000) for i in range(101)]
    cards = [tx(f"sharer-{i}", T_HOUR + i * MIN, "completed", card="shared", ip=f"10.9.0.{i}") for i in range(5)]
    fails = [tx("ct", T0 + i * MIN, card=f"c{i}") for i in range(3)]
    return farm + bot, cards + fails


def comparable(alerts) -> list[dict]:
    """The alerts without detected_at: the wall clock when the alert was raised, by definition."""
    return sorted(({k: v for k, v in a.items() if k != "detected_at"} for a in alerts), key=repr)


async def test_alerts_are_the_same_with_1_or_4_consumers_and_any_batch_size(backend, settings):
    """Which user tips an IP or a card over its threshold depends on the order forwarded records
    reach the subject's partition (consumers, batch sizes): no output field may depend on it."""
    clicks, txs = mixed_input()
    runs = []
    for consumers, batch in ((1, 200), (4, 200), (1, 1)):
        backend.sync.flushall()
        await control.ensure_groups(backend.aio, settings)
        publish(backend.sync, clicks, settings)
        publish(backend.sync, txs, settings, TX)
        await consume_all(backend, settings.replace(batch_size=batch), consumers)
        await control.flush(backend.aio, settings)
        out = await export.collect(backend.aio, settings)
        runs.append((comparable(out.alerts), sorted((p["user_id"], p.get("risk_score"), p.get("risk_at"))
                                                    for p in out.profiles)))
    assert {a["rule"] for a in runs[0][0]} == {"ip_users", "card_testing", "events_per_minute", "burst",
                                               "failed_payments"}
    assert runs[1] == runs[0] and runs[2] == runs[0]
    ip = [(a["user_id"], a["count"], a["evidence"]) for a in runs[0][0] if a["rule"] == "ip_users"]
    assert sorted(ip) == [("", 11, {"window_minutes": 10})] + [(f"farm-{i}", 11, {"role": "member"})
                                                              for i in sorted(range(14), key=str)]


async def test_a_threshold_lowered_mid_minute_fires_on_the_next_event(backend, settings, tmp_path):
    """5 clicks under threshold 10, then the file says 3: the 6th click of the minute is over it
    (an equality test, c == threshold + 1, never fires: the count went past 4 before)."""
    rules = tmp_path / "rules.toml"
    rules.write_text("[events_per_minute]\nthreshold = 10\n[burst]\nenabled = false\n")
    settings = settings.replace(rules_file=str(rules))
    await control.ensure_groups(backend.aio, settings)
    first = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    publish(backend.sync, [event("x", T0 + i * S) for i in range(5)], settings)
    await first.run()
    rules.write_text("[events_per_minute]\nthreshold = 3\n[burst]\nenabled = false\n")
    os.utime(rules, (os.stat(rules).st_atime, os.stat(rules).st_mtime + 5))
    second = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    second.rules = first.rules                               # one process's watcher, as in a long run
    publish(backend.sync, [event("x", T0 + (10 + i) * S) for i in range(3)], settings)
    await second.run()
    assert first.rules.reloads == 1
    out = await export.collect(backend.aio, settings)
    assert [(a["rule"], a["window_start"], a["count"], a["threshold"]) for a in out.alerts] == \
        [("events_per_minute", format_us(T0), 6, 3)]             # once: the marker holds the 7th and 8th
