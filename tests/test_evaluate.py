"""The evaluation harness: the pure scoring (engine/evaluation.py) on hand-made inputs, the scenario
library equal to what its authoring tool writes, and ``shopstream evaluate`` / ``backtest`` end to
end on a real redis-server.  The targets of issue 16 are not asserted here (the rules that meet
them are asserted where they are written); this file checks that the numbers are produced and agree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shopstream.engine import evaluation as ev
from shopstream.engine.cli import main
from shopstream.engine.evaluate import evaluate, load, write_input
from shopstream.engine.settings import Settings
from shopstream.engine.tools import scenarios

LIBRARY = Path(__file__).resolve().parents[1] / "data" / "scenarios"
T0 = "2026-11-16T10:00:00.000Z"


def lab(uid, pattern, fraud=True, named=True, at=T0):
    return ev.Label.of({"user_id": uid, "pattern": pattern, "fraud": fraud, "named": named,
                        "fraud_at": at if fraud else None})


LABELS = [lab("f1", "ato"), lab("f2", "ato"), lab("f3", "mule", named=False), lab("f4", "mule", named=False),
          lab("c1", "traveller", fraud=False), lab("c2", "traveller", fraud=False), lab("c3", "background", fraud=False)]


def alert(uid, rule, window=T0):
    return {"rule": rule, "user_id": uid, "window_start": window, "subject": uid, "evidence": {}}


# -- flagged: the one definition ----------------------------------------------------------------
def test_without_decisions_an_alert_naming_the_user_flags_them_member_records_included():
    alerts = [alert("f1", "new_country_purchase"), alert("f1", "failed_payments", "2026-11-16T09:00:00.000Z"),
              alert("", "ip_users"), {**alert("c1", "ip_users"), "evidence": {"role": "member"}}]
    flags = ev.flagged(None, alerts)
    assert set(flags) == {"f1", "c1"}
    assert flags["f1"].reasons == ("failed_payments", "new_country_purchase")
    assert flags["f1"].event_us == ev.parse_timestamp("2026-11-16T09:00:00.000Z")     # the earliest window


def test_with_decisions_a_review_or_block_counts_until_retracted_and_the_time_is_when_it_began():
    """step_up is a challenge, not a flag; a later decision at a lower action after the score decayed
    (c3) does not undo a flag, a retraction (c1) does."""
    d = lambda uid, action, t, *codes, **kw: {"user_id": uid, "action": action, "event_time": t,  # noqa: E731
                                              "reasons": [{"code": c, "points": 10} for c in codes], **kw}
    decisions = [d("f1", "review", "2026-11-16T10:00:05Z", "new_device"),
                 d("f1", "allow", "2026-11-16T10:01:00Z", retraction=True),           # retracted: not flagged then
                 d("f1", "step_up", "2026-11-16T10:05:00Z", "new_device", "password_reset"),
                 d("f1", "block", "2026-11-16T10:06:00Z", "new_device", "password_reset", "high_value"),
                 d("c1", "review", "2026-11-16T10:00:00Z", "new_country"),
                 d("c1", "allow", "2026-11-16T10:02:00Z", retraction=True),
                 d("c2", "allow", "2026-11-16T10:00:00Z"),
                 d("c3", "review", "2026-11-16T10:00:00Z", "ip_users"),
                 d("c3", "step_up", "2026-11-16T13:00:00Z", "ip_users"),
                 d("s1", "step_up", "2026-11-16T10:00:00Z", "new_country")]
    flags = ev.flagged(decisions, [alert("c2", "ip_users")])       # decisions win over alerts
    assert set(flags) == {"f1", "c3"}
    assert flags["f1"].reasons == ("high_value", "new_device", "password_reset")
    assert flags["f1"].event_us == ev.parse_timestamp("2026-11-16T10:06:00Z")
    assert ev.fired(decisions, [])["f1"] == {"new_device", "password_reset", "high_value"}
    assert ev.fired(decisions, [])["c1"] == {"new_country"}


# -- scoring ----------------------------------------------------------------------------------
def test_nothing_flagged():
    r = ev.score(LABELS, {})
    assert (r.true_pos, r.false_pos, r.precision) == (0, 0, 1.0)
    assert r.recall(True) == 0 and r.recall(False) == 0
    assert set(ev.check(r)) == {"recall of ato 0% < 90%", "recall on unnamed patterns 0% < 70%"}
    assert "ato" in ev.render(r)


def test_everyone_flagged():
    flags = {x.user_id: ev.Flag(("rule_a",), ev.parse_timestamp("2026-11-16T10:00:30Z")) for x in LABELS}
    r = ev.score(LABELS, flags)
    assert (r.true_pos, r.false_pos) == (4, 3) and r.precision == pytest.approx(4 / 7)
    assert r.recall(True) == 1 and r.recall(False) == 1
    rows = {row.pattern: row for row in r.rows}
    assert rows["traveller"].flagged == 2 and rows["traveller"].reasons == {"rule_a": 2}
    assert rows["ato"].delays_s == [30.0, 30.0] and r.delays() == [30.0] * 4
    assert set(ev.check(r)) == {"2 ordinary customers of traveller flagged", "1 ordinary customers of background flagged",
                                "precision 57.1% < 95%"}


def test_unnamed_patterns_are_held_to_their_own_target_as_a_whole():
    flags = {u: ev.Flag(("r",), None) for u in ("f1", "f2", "f3")}       # 1 of 2 unnamed: 50 %
    r = ev.score(LABELS, flags)
    assert r.recall(False) == 0.5 and [row.recall for row in r.rows if row.pattern == "mule"] == [0.5]
    assert ev.check(r) == ["recall on unnamed patterns 50% < 70%"]
    assert r.delays() == []                                              # no event time: no delay
    r = ev.score(LABELS, {**flags, "f4": ev.Flag(("r",), None)})
    assert ev.check(r) == []


def test_a_flag_before_the_fraud_counts_as_no_delay_and_unlabelled_users_are_listed():
    r = ev.score(LABELS, {"f1": ev.Flag(("r",), ev.parse_timestamp("2026-11-16T09:00:00Z")),
                          "zz": ev.Flag(("r",), None)})
    assert r.delays() == [0.0] and r.unlabelled == ["zz"] and r.precision == 1.0


def test_percentiles_are_nearest_rank():
    assert ev.percentile([], 0.5) is None
    assert ev.percentile([5.0], 0.9) == 5.0
    assert ev.percentile([float(x) for x in range(1, 11)], 0.5) == 5.0
    assert ev.percentile([float(x) for x in range(1, 11)], 0.9) == 9.0


def test_shadow_diff_per_user_and_rule():
    live = {"a": {"r1", "r2"}, "b": {"r1"}}
    shadow = {"a": {"r2", "r3"}, "c": {"r4"}}
    assert ev.shadow_diff(live, shadow) == {"live_only": [("a", "r1"), ("b", "r1")],
                                            "shadow_only": [("a", "r3"), ("c", "r4")]}


# -- the library ------------------------------------------------------------------------------
def test_the_committed_library_is_what_the_authoring_tool_writes():
    built = scenarios.build()
    assert sorted(built) == sorted(p.name for p in LIBRARY.glob("*.jsonl"))
    for name, lines in built.items():
        assert (LIBRARY / name).read_text() == "\n".join(lines) + "\n", f"{name}: run python -m shopstream.engine.tools.scenarios"


def test_the_library_has_what_issue_16_asks_for():
    labels = load(LIBRARY).labels
    by = {}
    for x in labels:
        by.setdefault((x.pattern, x.fraud, x.named), []).append(x)
    fraud_named = [k for k in by if k[1] and k[2]]
    fraud_unnamed = [k for k in by if k[1] and not k[2]]
    ordinary = [k for k in by if not k[1] and k[0] != "background"]
    assert len(fraud_named) >= 13 and len(fraud_unnamed) >= 5
    assert len([k for k in ordinary if not k[2]]) >= 8 and len(ordinary) >= 13
    assert all(len(by[k]) >= 5 for k in fraud_named + fraud_unnamed)
    assert all(len(by[k]) >= 10 for k in ordinary)
    assert len(by[("background", False, False)]) >= 200
    assert all(x.fraud_at_us for x in labels if x.fraud)


def test_load_refuses_unlabelled_users_and_writes_the_four_sources(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"source": "click", "user_id": "u1", "event_type": "page_view",
                                                  "timestamp": T0}) + "\n")
    with pytest.raises(ValueError, match="without a label: u1"):
        load(tmp_path)
    with (tmp_path / "s.jsonl").open("a") as fh:
        fh.write(json.dumps({"source": "transaction", "transaction_id": "t1", "user_id": "u1", "amount": "5.00",
                             "status": "failed", "timestamp": T0}) + "\n")
        fh.write(json.dumps({"label": {"user_id": "u1", "pattern": "p", "fraud": False, "named": False}}) + "\n")
    folder = write_input(load(tmp_path), tmp_path / "in")
    assert sorted(p.name for p in folder.iterdir()) == ["clickstream_events.json", "customer_support_interactions.json",
                                                       "product_catalog.json", "transactions.csv"]
    assert (folder / "transactions.csv").read_text().splitlines()[1].startswith("t1,u1,,5.00,,failed")


@pytest.fixture
def keep_logging():
    """main() points the root logger at this test's captured stderr; give the next test its own."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- end to end -------------------------------------------------------------------------------
def test_evaluate_the_library_with_the_current_rules(real_redis_url, capsys, tmp_path):
    # the engine's default settings, as `shopstream evaluate` runs it (the fast-test fixture's 600 ms
    # leases move partitions between the consumers under load, and with them when a subject's signal
    # reaches a user: docs/rules.md "Measured")
    s = Settings(redis_url=real_redis_url, partitions=16, metrics_port=None)
    result = evaluate(LIBRARY, s)
    report = result["report"]
    labels = load(LIBRARY).labels
    assert sum(r.actors for r in report.rows) == len(labels)
    assert report.true_pos + report.false_pos == sum(r.flagged for r in report.rows)
    assert report.true_pos == sum(r.flagged for r in report.rows if r.fraud)
    assert report.true_pos > 0 and report.unlabelled == []
    for row in report.rows:
        assert 0 <= row.flagged <= row.actors and len(row.users) == row.flagged
        assert not row.fraud or len(row.delays_s) <= row.flagged
    text = ev.render(report)
    assert "recall, named patterns" in text and "precision" in text and "carrier_nat" in text
    print(text, f"\nevaluated in {result['seconds']:.1f} s", sep="\n")
    assert result["seconds"] < 120
    # Floors measured when the rules were rewritten (docs/rules.md has the table; runs vary by a few
    # users with the settings and the consumers' timing: which decision a subject signal causes
    # depends on when it reaches the user): a change that loses
    # fraudsters or flags ordinary customers fails here.  The issue's targets (recall 90 % per named
    # pattern, 70 % unnamed, precision 95 %) are not all met yet; these floors are not them.
    assert report.source == "decisions"
    # (precision 99.4 %, 1 ordinary customer flagged, over three runs with the account-takeover context
    # signals; 97.6 % and 4 before them)
    assert report.precision >= 0.97, text
    assert [r.pattern for r in report.rows if not r.fraud and r.named and r.flagged] == [], text
    assert sum(r.flagged for r in report.rows if not r.fraud) <= 3, text
    # (named 95.4 %, unnamed 74.6 % over three runs with them; 90.1-90.8 % and 67.8-71.2 % before them)
    assert report.recall(True) >= 0.90 and report.recall(False) >= 0.65, text
    ato = {r.pattern: r.recall for r in report.rows if r.pattern.startswith("ato_")}
    # (measured 6/6, 5/6, 3/6; 2/6, 4/6, 3/6 before)
    assert ato["ato_browse_first"] >= 0.8 and ato["ato_proxy_reset"] >= 0.6 and ato["ato_split_orders"] >= 0.3, text
    caught = {r.pattern for r in report.rows if r.fraud and r.recall == 1.0}
    assert {"account_farm", "bot_burst", "card_collector", "card_drip", "card_testing", "refund_abuse",
            "slow_declines", "steady_scraper", "promo_abuse", "triangulation", "credential_stuffing"} <= caught, text
    assert [r.recall for r in report.rows if r.pattern == "proxy_card_ring"][0] >= 0.75, text   # 87.5 % measured


def test_the_command_with_a_shadow_rules_file_json_and_check(real_redis_url, tmp_path, capsys, keep_logging):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("card_testing.jsonl", "buy_again.jsonl"):
        (lib / name).write_text((LIBRARY / name).read_text())
    out = tmp_path / "eval.json"
    try:
        main(["evaluate", str(lib), "--shadow", str(Path(__file__).resolve().parents[1] / "ops" / "rules.toml"),
              "--json", str(out), "--check", "--redis-url", real_redis_url])
        code = 0
    except SystemExit as exc:
        code = exc.code
    text = capsys.readouterr().out
    assert out.exists(), (code, text)
    data = json.loads(out.read_text())
    assert "card_testing" in text and "shadow run with" in text
    assert code == (1 if data["live"]["failures"] else 0)
    assert {p["pattern"] for p in data["live"]["patterns"]} == {"card_testing", "buy_again"}
    assert set(data["shadow_diff"]) == {"live_only", "shadow_only"}
    merged = evaluate(lib, Settings(redis_url=real_redis_url, metrics_port=None), interleave=True)["report"]
    assert sum(r.actors for r in merged.rows) == sum(p["actors"] for p in data["live"]["patterns"])


def test_backtest_over_the_lake(real, settings, tmp_path, capsys, keep_logging):
    pytest.importorskip("deltalake")
    from shopstream.engine import export
    from shopstream.engine.lake.archiver import Archiver
    from shopstream.engine.lake.backtest import backtest
    from shopstream.engine.lake.store import Lake
    from tests import lakedata
    from shopstream.engine import aio
    s = settings.replace(redis_url=real.url)
    aio.run(lakedata.run_engine(real, s))
    original = aio.call(real.url, s, export.collect).alerts
    lake = Lake(str(tmp_path / "lake"))
    Archiver(real.sync, s, lake, until_idle=True).run()
    done = backtest(lake.uri, s, None)
    assert lakedata.DAY in done["days"]       # and the day the bad record arrived (no event time)
    key = lambda a: (a["rule"], a["subject"], a["user_id"], a["window_start"])     # noqa: E731
    assert sorted(map(key, done["alerts"])) == sorted(map(key, original)) and original
    assert sum(done["per_rule"].values()) == len([a for a in original if a["evidence"] != {"role": "member"}])
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"label": {"user_id": u, "pattern": "bot" if u == "bot" else "shopper",
                                                    "fraud": u == "bot", "named": True, "fraud_at": f"{lakedata.DAY}T11:00:00Z"}}) + "\n"
                              for u in lakedata.USERS))
    main(["backtest", "--lake", lake.uri, "--date", lakedata.DAY, "--labels", str(labels), "--redis-url", real.url,
          "--partitions", str(s.partitions)])
    text = capsys.readouterr().out
    assert "alerts" in text and "recall, named patterns" in text and "bot" in text


def test_the_library_is_published_in_its_merged_order_whatever_the_publisher_s_timing(real_redis_url, tmp_path):
    """The consumers merge a partition's streams by entry id, clicks first within one millisecond.
    Ids taken at arrival put a whole pipeline in one millisecond, so a payment published before a
    click went after it, and two evaluations of one library could differ with the publisher's
    timing.  Each record gets a millisecond of its own, in the merged order."""
    import redis
    from shopstream.engine import aio, control
    from shopstream.engine.evaluate import STREAM_OF, _time_of, publish_in_time_order
    from shopstream.engine.batch import merge_sources
    from shopstream.engine.eventtime import parse_timestamp
    from shopstream.engine.keys import Keys
    source_of = {stream: source for source, stream in STREAM_OF.items()}
    lib = load(LIBRARY)
    s = Settings(redis_url=real_redis_url, partitions=4, namespace="evalorder", metrics_port=None)
    aio.call(s.redis_url, s, control.ensure_groups)
    input_dir = write_input(lib, tmp_path / "in")
    try:
        publish_in_time_order(lib, input_dir, s)
        client = redis.Redis.from_url(real_redis_url)
        for part in Keys(s.namespace, s.partitions).all_partitions():
            # the consumers' order: merge_sources, as a consumer merges what it read
            entries = merge_sources({source: client.xrange(part.key(source)) for source in set(STREAM_OF.values())})
            times = [parse_timestamp(_time_of(source_of[source], json.loads(f[b"e"]))) for source, (_, f) in entries]
            assert times == sorted(times)                                 # what the engine sees: event-time order
            assert len({entry_id.split(b"-")[0] for _, (entry_id, _) in entries}) == len(entries)   # a ms each
            assert len({source for source, _ in entries}) > 1
    finally:
        aio.call(s.redis_url, s, control.reset)
