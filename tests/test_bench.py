"""The benchmark runs (tiny, so CI checks it works; its numbers are not asserted: never timed tests)."""

from __future__ import annotations

import json

from shopstream.engine.tools.benchdata import generate
from shopstream.engine.schema import parse_click

from .support import shopstream


def test_bench_data_is_valid_and_has_bots_and_disorder():
    raws = generate(5000, users=200)
    clicks = [parse_click(r, 1_900_000_000_000_000, 86_400_000_000, 256) for r in raws]
    assert len(clicks) == 5000
    assert any(c.user_id.startswith("bot") for c in clicks)
    assert any(b.ts_us < a.ts_us for a, b in zip(clicks, clicks[1:]))          # out of order
    assert all(b.ts_us >= a.ts_us - 300_000_000 for a, b in zip(clicks, clicks[1:]))  # within B


def test_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    stdout = shopstream("bench", "--events", "20000", "--users", "2000", "--runs", "1", "--consumers", "1",
                        "--scale-partitions", "4", "--rate", "2000", "--rules-share", "--json", str(out), timeout=600)
    assert "transport ceiling" in stdout and "engine end to end" in stdout
    # the archive's throughput over the same run's streams (the lake extra is installed for the tests)
    assert "archive rows/s vs engine events/s" in stdout
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["transport_events_per_s"] > 0 and summary["engine_events_per_s"] > 0
    assert summary["fixed_rate_latency_ms"]["n"] > 0            # alerts were detected and timed
    assert summary["fixed_rate_offered_events_per_s"] >= 0.8 * 2000   # the stage ran at its rate (2,000/s)
    assert summary["memory"]["open_sessions"] > 0
    assert report["archive"]["rows"] > 20000 and report["archive"]["engine_events_per_s"] > 0
    assert {s["name"] for s in report["stages"]} >= {"transport", "engine", "engine@rate", "engine@capacity"}
    assert 0 < summary["floor_apply_us_per_event"] < summary["apply_us_per_event"]
    assert "the design's floor" in stdout
    assert "the rule set's Redis cost per event" in stdout and summary["ordinary_events"] > 0
    assert "ordinary customers alerted on" in stdout and summary["ordinary_users"] > 1000
    assert 0 <= summary["ordinary_users_alerted"] < summary["ordinary_users"]


def test_re_keyed_alerts_and_their_members_decisions_are_timed_from_the_triggering_event():
    from shopstream.engine.tools.bench import _rule_latencies
    from shopstream.engine.tools.benchdata import Trigger
    triggers = {("ip_users", "ip", "10.0.0.1", 3_600_000): Trigger(7, frozenset({"u1", "u2"}))}
    published = {7: 1_000.0}

    def line(recv, rule, kind, subject, window, entry="", role="", user=""):
        return "\t".join(map(str, (recv, rule, kind, subject, window, entry, role, user)))
    by_rule, untimed, _ = _rule_latencies([
        line(1_250.0, "burst", "user", "u9", 0, entry="900-0"),                  # an entry: from its id
        line(1_400.0, "ip_users", "ip", "10.0.0.1", 3_600_000),                  # the subject alert
        line(1_600.0, "ip_users", "ip", "10.0.0.1", 3_600_000, role="member", user="u1"),
        line(1_700.0, "ip_users", "ip", "10.0.0.1", 3_600_000, role="member", user="u2"),
        line(9_000.0, "ip_users", "ip", "10.0.0.1", 3_600_000, role="member", user="u3"),   # joined later
        line(5_000.0, "ip_users", "ip", "10.9.9.9", 3_600_000),                  # no trigger known
    ], triggers, published.__getitem__)
    assert by_rule["burst"]["p50"] == 350.0
    assert by_rule["ip_users (ip)"]["max"] == 400.0
    assert by_rule["ip_users (ip) member"]["n"] == 2 and by_rule["ip_users (ip) member"]["max"] == 700.0
    assert untimed == {"ip_users (ip) member": 1, "ip_users (ip)": 1}


def test_bench_compares_a_cluster_with_a_single_node(tmp_path):
    out = tmp_path / "cluster.json"
    stdout = shopstream("bench", "--cluster", "3", "--events", "20000", "--users", "500", "--runs", "1",
                        "--consumers", "1", "--rate", "2000", "--latency-events", "6000", "--json", str(out), timeout=600)
    assert "3 masters" in stdout and "busiest master" in stdout
    assert "every timed decision p99 <= 1,000 ms at 2,000 events/s, cluster" in stdout
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["events_per_s"]["single"] > 0 and summary["events_per_s"]["cluster"] > 0
    # the cluster spreads the Redis work: its busiest master does less than all of its masters
    assert summary["busiest_master_cpu_us_per_event"]["cluster"] < summary["redis_cpu_us_per_event"]["cluster"]
    assert [s["name"] for s in report["stages"]] == ["engine", "engine@cluster3", "engine@rate", "engine@rate-cluster3"]
    assert all(s["alerts"] > 0 for s in report["stages"])      # its subscriber hears alerts from every master
    # the latency stages ran at their rate, on mixed traffic, and timed decisions on both sides
    assert all(side >= 0.8 * 2000 for side in summary["rate_offered_events_per_s"].values())
    assert all(n > 0 for n in summary["latency_n"]["decision"].values())
    assert report["mix"]["tx"] > 0 and report["stages"][2]["events"] == 6000


def test_mixed_bench_data_is_valid_and_exercises_every_rule():
    from shopstream.engine.keys import CLICKS, SUPPORT, TX
    from shopstream.engine.schema import parse_ticket, parse_transaction
    from shopstream.engine.tools.benchdata import generate_mixed, subject_triggers
    mixed = generate_mixed(50_000, users=500)
    assert len(mixed.payloads) == 50_000
    now, ahead, ids = 1_900_000_000_000_000, 86_400_000_000, 256
    parse = {CLICKS: parse_click, TX: parse_transaction, SUPPORT: parse_ticket}
    parsed = [(s, parse[s](raw, now, ahead, ids)) for s, raw in zip(mixed.sources, mixed.payloads)]
    clicks = [p for s, p in parsed if s == CLICKS]
    txs = [p for s, p in parsed if s == TX]
    assert {c.device for c in clicks} >= {"web", "ios", "android"} and len({c.country for c in clicks}) >= 5
    assert len({c.ip for c in clicks}) > 500
    assert 0.01 < len(txs) / len(parsed) < 0.1 and any(not t.completed for t in txs)
    assert len({t.card for t in txs}) > 100 and any(s == SUPPORT for s, _ in parsed)
    kinds = {key[:2] for key in subject_triggers(mixed)}
    assert kinds == {("ip_users", "ip"), ("card_testing", "card")}
    assert generate_mixed(5_000, users=100) == generate_mixed(5_000, users=100)      # seeded
    homes: dict[str, set] = {}
    for c in clicks:
        if c.user_id.startswith("user"):
            homes.setdefault(c.user_id, set()).add(c.country)
    assert all(len(countries) == 1 for countries in homes.values())   # ordinary users click from home


def test_the_floor_applies_each_event_once_and_keeps_a_state_per_user(real_redis_url):
    """The bench's floor stage does what it claims: every valid event applied once (a redelivered
    batch applies nothing: the XACK guard), one state key per user."""
    from shopstream.engine.batch import decode_entries, merge_sources
    from shopstream.engine.connection import sync_client
    from shopstream.engine.keys import CLICKS, Keys
    from shopstream.engine.settings import Settings
    from shopstream.engine.tools import benchfloor
    from shopstream.engine.tools.benchdata import generate_mixed

    mixed = generate_mixed(3000, users=100)
    settings = Settings(redis_url=real_redis_url, partitions=4, namespace="floortest", metrics_port=None)
    client = sync_client(real_redis_url)
    result = benchfloor.measure(client, settings, mixed.sources, mixed.payloads, batch=200)
    assert result["events"] == len(mixed.payloads) and result["calls"] >= 4
    users = {json.loads(p)["user_id"] for p in mixed.payloads}
    assert sum(1 for _ in client.scan_iter(match="floortest:{*}:user:*", count=1000)) == len(users)
    part = Keys("floortest", 4).partition(0)
    entries = client.xrange(part.key(CLICKS), count=50)            # the same entries once more
    decoded = decode_entries(merge_sources({CLICKS: entries}), 0, 1_900_000_000_000_000, settings)
    again = client.eval(benchfloor.FLOOR_LUA, 5, part.prefix, part.key(CLICKS), part.key("tx"), part.key("support"),
                        part.key("rekey"), settings.group, settings.state_ttl_ms, decoded.events)
    assert again == [0, decoded.count]


def test_the_bench_ordinary_users_follow_the_funnel():
    """Ordinary customers of the mixed stream fill a cart from a product page, check out a cart and
    buy after a checkout, within a session: the bench measures the rules on customers, not on
    sessions that start at a checkout (a third of them were stepped up by inhuman_speed)."""
    from shopstream.engine.tools.benchdata import generate_mixed
    from shopstream.engine.keys import CLICKS

    mixed = generate_mixed(30000, users=600)
    by_user: dict[str, list] = {}
    for source, raw in zip(mixed.sources, mixed.payloads):
        e = json.loads(raw)
        if source == CLICKS and e["user_id"].startswith("user"):
            by_user.setdefault(e["user_id"], []).append((e["timestamp"], e["event_type"]))
    needs = {"add_to_cart": "product_view", "checkout": "add_to_cart", "purchase": "checkout"}
    out_of_order, purchases = 0, 0
    for clicks in by_user.values():
        seen, last = set(), None
        for ts, etype in sorted(clicks):
            t = parse_click(json.dumps({"user_id": "x", "event_type": "page_view", "timestamp": ts}).encode(),
                            1_900_000_000_000_000, 86_400_000_000, 256).ts_us
            if last is None or t - last >= 1_800_000_000:
                seen = set()
            last = t
            out_of_order += etype in needs and needs[etype] not in seen
            purchases += etype == "purchase"
            seen.add(etype)
    assert purchases > 100 and out_of_order == 0


def test_a_paced_producer_that_falls_behind_catches_up_instead_of_lowering_the_rate():
    """The latency stage publishes at a fixed rate; when a publish round is slow (Redis busy with a
    script call), the next round takes every event that is due (up to a cap) instead of the same
    small chunk, so the offered rate stays the stage's rate.  With fixed chunks of rate/100 and a
    round trip of 30 ms, 1 s of input took 3 s (the bench's 1M/min stage offered 0.63-0.75M/min)."""
    from shopstream.engine.tools.bench import paced
    now = [0.0]
    rounds = []
    for lo, hi in paced(10_000, rate=10_000, cap=2_000, clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s)):
        rounds.append((lo, hi))
        now[0] += 0.030                                 # each publish round trip: 30 ms
    assert [lo for lo, _ in rounds] == [0] + [hi for _, hi in rounds[:-1]] and rounds[-1][1] == 10_000
    assert now[0] <= 1.0 + 0.030 * 2                    # 1 s of input offered in about 1 s
    assert max(hi - lo for lo, hi in rounds) <= 2_000
    # ahead of the schedule it waits: 100 events at 100/s take 1 s, however fast a round is
    now[0] = 0.0
    assert sum(hi - lo for lo, hi in paced(100, rate=100, cap=2_000, clock=lambda: now[0],
                                           sleep=lambda s: now.__setitem__(0, now[0] + s))) == 100
    assert 0.98 <= now[0] <= 1.0
    assert list(paced(2_500, rate=None, cap=1_000)) == [(0, 1_000), (1_000, 2_000), (2_000, 2_500)]


def test_the_users_an_alert_named_count_each_user_once_and_leave_decisions_out():
    """The ordinary customers the rules flag (issue 16's false positives at the bench's scale): a
    user alert's user, an IP or card alert's members, not the subject alert itself, not decisions."""
    from shopstream.engine.tools.bench import users_alerted
    lines = ["1.0\tinhuman_speed\tuser\tuser7\t0\t1-0\t\tuser7",
             "1.0\tdecision\tuser\tuser7\t0\t1-0\t\tuser7",
             "1.0\tdecision\tuser\tuser8\t0\t1-0\t\tuser8",          # a decision alone: no new alert
             "1.0\tinhuman_speed\tuser\tuser7\t60000\t2-0\t\tuser7",   # the same user again
             "1.0\tip_users\tip\t10.0.0.1\t0\t\t\t",                  # the IP alert: names no user
             "1.0\tip_users\tip\t10.0.0.1\t0\t\tmember\tuser9",
             "1.0\tip_users\tip\t10.0.0.1\t0\t\tmember\tuser7"]
    assert users_alerted(lines) == (2, {"inhuman_speed": 1, "ip_users": 2})
