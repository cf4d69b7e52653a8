"""Pure logic: tables of input -> expected output (no Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from redis.crc import key_slot

from shopstream.engine.assignment import assigned
from shopstream.engine.batch import decode_entries
from shopstream.engine.eventtime import BadTimestamp, format_us, parse_timestamp
from shopstream.engine.keys import CLICKS, Keys
from shopstream.engine.partitioning import partition_of
from shopstream.engine.schema import BadRecord, parse_click
from shopstream.engine.settings import Settings, load_settings

NOW = parse_timestamp("2026-11-25T12:00:00Z")
DAY = 86_400_000_000


@pytest.mark.parametrize("text, expected", [
    ("2026-11-01T10:30:00Z", "2026-11-01T10:30:00.000Z"),
    ("2026-11-01T10:30:00.123Z", "2026-11-01T10:30:00.123Z"),
    ("2026-11-01T10:30:00.123456Z", "2026-11-01T10:30:00.123Z"),
    ("2026-11-01T12:30:00+02:00", "2026-11-01T10:30:00.000Z"),
    ("2026-11-01T05:30:00.5-05:00", "2026-11-01T10:30:00.500Z"),
    ("2026-11-01 10:30:00", "2026-11-01T10:30:00.000Z"),           # naive, space: UTC
    ("2026-11-01T10:30:00", "2026-11-01T10:30:00.000Z"),
    ("2026-11-01T00:30:00+01:00", "2026-10-31T23:30:00.000Z"),     # crosses midnight backwards
    ("2026-11-01T10:30", "2026-11-01T10:30:00.000Z"),              # slow path (no seconds)
    ("2026-11-01T10:30:00.123456789Z", "2026-11-01T10:30:00.123Z"),
    (1793529000123, "2026-11-01T10:30:00.123Z"),                   # epoch ms
    (1793529000123.5, "2026-11-01T10:30:00.123Z"),
    ("1793529000123", "2026-11-01T10:30:00.123Z"),                 # digits in a string
    (1793529000, "2026-11-01T10:30:00.000Z"),                      # epoch seconds (by magnitude)
    (1793529000.25, "2026-11-01T10:30:00.250Z"),
    (1793529000123456, "2026-11-01T10:30:00.123Z"),                # epoch microseconds
    ("2026-11-01 10:30:00 UTC", "2026-11-01T10:30:00.000Z"),       # warehouse exports
    ("2026-11-01 10:30:00.5UTC", "2026-11-01T10:30:00.500Z"),
    ("2026-11-01T10:30:00+0000", "2026-11-01T10:30:00.000Z"),
    ("20261101T103000Z", "2026-11-01T10:30:00.000Z"),
    ("2026-11-01T16:00:00.123+05:30", "2026-11-01T10:30:00.123Z"),
])
def test_timestamps(text, expected):
    assert format_us(parse_timestamp(text)) == expected


def test_microseconds_are_kept():
    assert parse_timestamp("2026-11-01T10:30:00.000001Z") - parse_timestamp("2026-11-01T10:30:00Z") == 1
    assert parse_timestamp(1793529000123457) - parse_timestamp(1793529000123456) == 1


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
                                 "2026-11-01T25:00:00Z", "1969-12-31T23:59:59Z", -5, None, True,
                                 "2200-01-01T00:00:00Z", float("nan"), float("inf"), 10**30, [1], "12ab"])
def test_bad_timestamps(bad):
    with pytest.raises(BadTimestamp):
        parse_timestamp(bad)


def click(**fields) -> bytes:
    import msgspec
    base = {"user_id": "u1", "event_type": "page_view", "timestamp": "2026-11-25T11:00:00Z"}
    base.update(fields)
    return msgspec.json.encode({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not valid JSON"),
    (click(user_id=...), "missing required field `user_id`"),
    (click(user_id=""), "user_id is empty"),
    (click(user_id="x" * 257), "longer than 256 bytes"),
    (click(user_id=None), "at `$.user_id`"),
    (click(event_type=42), "at `$.event_type`"),
    (click(event_type=""), "event_type is empty"),
    (click(timestamp="2026-11-27T12:00:00Z"), "ahead of the wall clock"),
    (click(timestamp="soon"), "not ISO-8601"),
    (click(device=5), "at `$.device`"),
    (click(schema_version=9), "unsupported schema_version 9"),
    (b"[1,2]", "Expected `object`"),
    (b'{"user_id": "\\ud800", "event_type": "x", "timestamp": 1}', "not valid JSON"),   # lone surrogate
])
def test_bad_records_have_readable_reasons(raw, reason):
    with pytest.raises(BadRecord, match=None) as exc:
        parse_click(raw, NOW, DAY, 256)
    assert reason in str(exc.value)


@pytest.mark.parametrize("raw, user, etype", [
    (click(), "u1", "page_view"),
    (click(user_id=" u1"), " u1", "page_view"),                    # byte-exact ids
    (click(user_id="{7}:ü\n*?"), "{7}:ü\n*?", "page_view"),
    (click(event_type="brand new type!"), "u1", "brand new type!"),  # unknown types are processed
    (click(extra_field={"nested": [1]}, properties={"a": 1}), "u1", "page_view"),  # unknown fields ignored
])
def test_good_records(raw, user, etype):
    c = parse_click(raw, NOW, DAY, 256)
    assert (c.user_id, c.event_type) == (user, etype)


@pytest.mark.parametrize("user, crc", [("123456789", 0xCBF43926),   # the CRC-32/IEEE check value
                                       ("alice", 0x278EBC47), ("ü-0042", 0x937DDD95)])
def test_partition_function_is_crc32_ieee_of_utf8_mod_n(user, crc):
    assert [partition_of(user, n) for n in (1, 16, 64)] == [0, crc % 16, crc % 64]


def test_partitions_are_all_used():
    assert {partition_of(f"u{i}", 16) for i in range(200)} == set(range(16))


@pytest.mark.parametrize("user", ["alice", "{0}", "}{", "a:{1}:b", " ", "ü\n", "x" * 256])
def test_every_key_of_one_script_call_is_in_the_partitions_slot(user):
    keys = Keys("ss", 16)
    p = keys.partition(partition_of(user, 16))
    derived = [p.user(user), p.count(29_000_000), p.hll(29_000_000), p.prefix + f"fired:29000000:{user}"]
    slots = {key_slot(k.encode()) for k in p.apply_keys() + derived}
    assert slots == {key_slot(f"{{{p.p}}}".encode())}
    assert all(k.startswith("ss:{") for k in p.apply_keys() + derived)


@pytest.mark.parametrize("members, me, n, expected", [
    ([], "a", 4, {0, 1, 2, 3}),
    (["a", "b"], "a", 4, {0, 2}),
    (["a", "b"], "b", 4, {1, 3}),
    (["c", "a", "b"], "c", 4, {2}),
    (["a", "b", "c", "d", "e"], "e", 4, set()),                   # more consumers than partitions
])
def test_assignment(members, me, n, expected):
    assert assigned(members, me, n) == expected


def test_assignment_covers_every_partition_once():
    members = ["x", "y", "z"]
    owned = [assigned(members, m, 16) for m in members]
    assert sorted(p for s in owned for p in s) == list(range(16))


def test_decode_entries_routes_bad_and_foreign_records_to_dead_letters():
    settings = Settings(partitions=4)
    home = partition_of("u1", 4)
    other = next(u for u in (f"v{i}" for i in range(50)) if partition_of(u, 4) != home)
    entries = [(b"1-0", {b"e": click()}), (b"2-0", [b"e", b"{"]), (b"3-0", None), (b"4-0", [b"x", b"1", b"y", b"2"]),
               (b"5-0", {b"e": click(user_id=other)})]
    d = decode_entries([(CLICKS, e) for e in entries], home, NOW, settings)
    assert d.count == 1 and msgspec.json.decode(d.events)[0][:3] == ["1-0", "c", "u1"]
    reasons = [x.reason for x in d.dead]
    assert [x.entry_id for x in d.dead] == [b"2-0", b"3-0", b"4-0", b"5-0"]
    assert "not valid JSON" in reasons[0] and "trimmed" in reasons[1] and "no 'e' field" in reasons[2]
    assert "belongs to partition" in reasons[3]


def test_settings_precedence(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("partitions = 8\nnamespace = 'fromfile'\nbatch_size = 10\n")
    s = load_settings({"namespace": "fromflag"}, env={"SHOPSTREAM_PARTITIONS": "32", "REDIS_URL": "redis://h:1"},
                      config_file=str(toml))
    assert (s.partitions, s.namespace, s.batch_size, s.redis_url) == (32, "fromflag", 10, "redis://h:1")
    with pytest.raises(Exception):
        load_settings(env={"SHOPSTREAM_PARTITIONS": "many"})


def test_a_bad_setting_names_where_it_came_from_and_an_empty_variable_is_unset(tmp_path):
    """An operator reads which variable or file to fix; `SHOPSTREAM_X=` (empty) means not set."""
    assert load_settings(env={"SHOPSTREAM_METRICS_PORT": "", "SHOPSTREAM_PARTITIONS": ""}).metrics_port == 9108
    with pytest.raises(msgspec.ValidationError, match="invalid setting partitions \\(from the environment: "
                                                      "SHOPSTREAM_PARTITIONS='many'\\)"):
        load_settings(env={"SHOPSTREAM_PARTITIONS": "many"})
    from shopstream.engine.settings import _shown            # a key or a URL is a secret: an error does not repeat it
    assert (_shown("audit_key", "s3cret"), _shown("redis_url", "redis://u:pw@h"), _shown("partitions", "x")) == \
        ("=...", "=...", "='x'")
    toml = tmp_path / "s.toml"
    toml.write_text("batch_size = 'ten'\n")
    with pytest.raises(msgspec.ValidationError, match=f"invalid setting batch_size \\(from {toml}\\)"):
        load_settings(config_file=str(toml), env={})
    proc = subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "trim"], capture_output=True, text=True,
                          env={**os.environ, "SHOPSTREAM_PARTITIONS": "many"}, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: invalid setting partitions (from the environment")


@pytest.mark.parametrize("content", [
    b'{"a": 1}\n\n{"a": 2}\n',                          # JSON Lines with a blank line
    b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}',               # BOM, CRLF, no final newline
    b'  [ {"a": 1},\n {"a": 2} ]\n',                    # one JSON array
    b'\xef\xbb\xbf[{"a": 1}, {"a": 2}]',
])
def test_input_files_as_json_lines_or_array(tmp_path, content):
    from shopstream.engine.producer import read_events
    path = tmp_path / "events.json"
    path.write_bytes(content)
    assert [msgspec.json.decode(r) for r in read_events(path)] == [{"a": 1}, {"a": 2}]


def test_an_unexpected_validator_error_dead_letters_the_record(monkeypatch):
    import shopstream.engine.batch as batch

    def broken(*_):
        raise KeyError("bug")
    monkeypatch.setattr(batch, "parse_click", broken)
    d = batch.decode_entries([(CLICKS, (b"1-0", {b"e": click()}))], 0, NOW, Settings(partitions=1))
    assert d.count == 0 and "unexpected validation error KeyError" in d.dead[0].reason


@pytest.mark.parametrize("amount, currency, minor", [("330.98", "USD", 33098), ("12", "USD", 1200), (12.5, "EUR", 1250),
                                                     ("1000", "JPY", 1000), ("1.234", "KWD", 1234), ("0.10", "USD", 10)])
def test_money_in_minor_units(amount, currency, minor):
    from shopstream.engine.schema import minor_units
    assert minor_units(amount, currency) == minor


@pytest.mark.parametrize("amount, currency, reason", [("1.005", "USD", "more than 2 decimals"), ("1.5", "JPY", "0 decimals"),
                                                      ("abc", "USD", "not a number"), ("-3", "USD", "out of range"),
                                                      ("NaN", "USD", "decimals"), ("1e20", "USD", "out of range")])
def test_bad_money_is_bad_input(amount, currency, reason):
    from shopstream.engine.schema import BadRecord, minor_units
    with pytest.raises(BadRecord, match=reason):
        minor_units(amount, currency)


def test_transaction_and_ticket_validation():
    from shopstream.engine.schema import BadRecord, parse_ticket, parse_transaction
    row = {"transaction_id": "t1", "user_id": "u", "amount": "9.99", "currency": "usd", "status": "FAILED",
           "card_fingerprint": "fp", "ip": "10.0.0.1", "country": "de", "timestamp": "2026-11-02T08:00:00Z"}
    t = parse_transaction(msgspec.json.encode(row), NOW, 86_400_000_000, 256)
    assert (t.completed, t.amount_minor, t.currency, t.country) == (False, 999, "USD", "DE")
    for change, reason in [({"status": "pending"}, "status"), ({"currency": "dollars"}, "ISO-4217"),
                           ({"user_id": ""}, "user_id is empty"), ({"timestamp": "yesterday"}, "timestamp"),
                           ({"schema_version": 2}, "unsupported schema_version")]:
        with pytest.raises(BadRecord, match=reason):
            parse_transaction(msgspec.json.encode({**row, **change}), NOW, 86_400_000_000, 256)
    ticket = {"ticket_id": "7", "user_id": "42", "status": "open", "created_at": "2026-11-02T08:00:00Z"}
    k = parse_ticket(msgspec.json.encode(ticket), NOW, 86_400_000_000, 256)
    assert (k.user_id, k.ticket_id, k.open) == ("42", "7", True)


def test_sources_merge_in_append_order_clicks_first_within_a_millisecond():
    from shopstream.engine.batch import merge_sources
    from shopstream.engine.keys import REKEY, SUPPORT, TX
    merged = merge_sources({TX: [(b"5-0", {}), (b"7-0", {})], CLICKS: [(b"5-1", {}), (b"6-0", {})],
                            SUPPORT: [(b"5-0", {})], REKEY: [(b"4-9", {})]})
    assert [(s, e[0]) for s, e in merged] == [(REKEY, b"4-9"), (CLICKS, b"5-1"), (TX, b"5-0"), (SUPPORT, b"5-0"),
                                              (CLICKS, b"6-0"), (TX, b"7-0")]


def test_replay_reads_each_source_kind(tmp_path):
    from shopstream.engine.keys import SUPPORT, TX
    from shopstream.engine.producer import CATALOG, kind_of, read_events
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("transaction_id,user_id,amount,status,timestamp\nt1,u1,1.00,completed,2026-11-02T08:00:00Z\n")
    rows = list(read_events(csv_file))
    assert msgspec.json.decode(rows[0])["amount"] == "1.00" and kind_of(rows) == TX
    assert kind_of([b'{"ticket_id": "k", "user_id": "u"}']) == SUPPORT
    assert kind_of([b"junk", b'{"product_id": "P1", "category": "books"}']) == CATALOG
    assert kind_of([b'{"user_id": "u", "product_id": "P1"}']) == CLICKS


def test_rules_defaults_and_validation():
    from shopstream.engine.rules import Rules, parse_rules
    assert parse_rules("") == Rules()
    three = "[ip_users]\nhorizons = [{minutes = 30, count = 3, points = 10}]\n"
    assert parse_rules(three).ip_users.horizons[0].count == 3
    for bad in ("[ip_users]\nhorizons = [{minutes = 30, count = 'x', points = 1}]\n", "[no_such_rule]\n",
                "[burst]\nseverity = 'extreme'\n", "= broken",
                "[ip_users]\nhorizons = [{minutes = 0, count = 3, points = 1}]\n",    # time is divided by them
                "[score]\nhalf_life_minutes = 0\n", "[score]\nreview = 20.0\n",       # review below step_up
                "[lists]\nshared_ip_ranges = ['10.0.0.0/33']\n", "[burst]\npoints = -1\n"):
        with pytest.raises(ValueError, match="invalid rules"):
            parse_rules(bad)
    lua = msgspec.json.decode(parse_rules("[burst]\nenabled = false\n[lists]\nshared_ip_ranges = ['10.1.0.0/16']\n")
                              .to_lua())
    assert lua["burst"] is False and lua["epm"] == 100 and lua["fail_h"][0] == [600_000_000, 3, 30]
    assert lua["shared_ips"] == [[0x0A010000, 0x0A01FFFF]] and lua["act"] == [30.0, 50.0, 80.0]


def test_the_shipped_rules_file_is_the_defaults():
    from shopstream.engine.rules import Rules, parse_rules
    assert parse_rules((Path(__file__).resolve().parent.parent / "ops" / "rules.toml").read_text()) == Rules()


def test_lua_readme_is_generated_from_the_current_headers():
    from shopstream.engine.scripts import LUA_DIR, readme
    assert (LUA_DIR / "README.md").read_text() == readme(), "run: python -m shopstream.engine.scripts > lua/README.md"


@pytest.fixture
def lua_dir(tmp_path, monkeypatch):
    """A scratch lua/ folder for the loader (engine/scripts.py), its source() cache cleared around."""
    from shopstream.engine import scripts
    (tmp_path / "includes").mkdir()
    monkeypatch.setattr(scripts, "LUA_DIR", tmp_path)
    scripts.source.cache_clear()
    yield tmp_path
    scripts.source.cache_clear()


def test_includes_nest_in_order_once_each(lua_dir):
    from shopstream.engine.scripts import source
    (lua_dir / "includes" / "a.lua").write_text("-- a\n--@include b\nlocal A = B\n")
    (lua_dir / "includes" / "b.lua").write_text("-- b\nlocal B = 1\n")
    (lua_dir / "s.lua").write_text("--[[ s: test.\n  KEYS[1] x\n]]\n--@include a\n--@include b\nreturn A\n")
    body = source("s").body
    assert body.index("local B = 1") < body.index("local A = B") < body.index("return A")
    assert body.count("local B = 1") == 1                          # b was included by a already
    assert "local KEY = {" in body and body.index("local KEY") < body.index("local B = 1")   # prelude first


def test_a_missing_include_or_a_cycle_is_an_error(lua_dir):
    from shopstream.engine.scripts import source
    (lua_dir / "s.lua").write_text("--[[ s: test.\n]]\n--@include nope\n")
    with pytest.raises(ValueError, match="no file"):
        source("s")
    (lua_dir / "includes" / "x.lua").write_text("--@include y\n")
    (lua_dir / "includes" / "y.lua").write_text("--@include x\n")
    (lua_dir / "t.lua").write_text("--[[ t: test.\n]]\n--@include x\n")
    with pytest.raises(ValueError, match="cycle"):
        source("t")


def test_a_header_that_disagrees_with_the_contract_is_refused(lua_dir):
    from shopstream.engine.scripts import source
    (lua_dir / "claim_lease.lua").write_text("--[[ claim_lease: test.\n  KEYS[1] a\n  KEYS[2] b\n]]\nreturn 1\n")
    with pytest.raises(ValueError, match="declares 2 KEYS"):
        source("claim_lease")


def test_generated_prelude_names_every_argument_and_checks_the_count():
    from shopstream.engine.contract import ApplyArgs
    from shopstream.engine.scripts import prelude
    text = prelude("apply_batch")
    assert "if #ARGV ~= 13 then return redis.error_reply('SS_CONTRACT apply_batch takes 13 ARGV" in text
    for f in msgspec.structs.fields(ApplyArgs):
        assert f"{f.name} = " in text
    assert "now_us = tonumber(ARGV[3])" in text and "consumer = ARGV[1]" in text


@pytest.mark.parametrize("field", ["watermark_quorum", "close_per_call"])
def test_a_setting_the_scripts_index_or_divide_by_must_be_positive(field):
    """A quorum of 0 would make the apply script fail after its first write: refused at load."""
    from shopstream.engine.settings import load_settings
    assert getattr(load_settings(env={f"SHOPSTREAM_{field.upper()}": "2"}), field) == 2
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{field}`"):
        load_settings(env={f"SHOPSTREAM_{field.upper()}": "0"})


def test_the_summary_counts_alerts_apart_from_the_member_records_that_link_users(capsys):
    """An IP alert on 15 users is one alert and 15 links (the demo said 16 alerts before)."""
    from shopstream.engine.report import print_alerts
    ip = {"rule": "ip_users", "subject_kind": "ip", "subject": "10.0.0.1"}
    print_alerts([{**ip, "user_id": "", "evidence": {"window_minutes": 10}}]
                 + [{**ip, "user_id": f"u{i}", "evidence": {"role": "member"}} for i in range(15)]
                 + [{"rule": "burst", "subject_kind": "user", "subject": "b", "evidence": {}}])
    out = capsys.readouterr().out
    assert "Alerts: 2 (and 15 member records" in out
    assert "ip_users                  1  on 1 ip, 15 users linked" in out


def test_format_us_matches_strftime_across_minutes_and_signs():
    """format_us / format_us_exact cache the minute's text: the same strings as strftime gave."""
    import random
    from datetime import datetime, timedelta, timezone

    from shopstream.engine.eventtime import format_us_exact
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(5)
    for us in [0, 1, 999, 1000, 59_999_999, 60_000_000, -1, -1001] + [rng.randrange(-10**15, 4 * 10**15)
                                                                     for _ in range(20_000)]:
        ms = epoch + timedelta(microseconds=us - us % 1000)
        exact = epoch + timedelta(microseconds=us)
        assert format_us(us) == ms.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms.microsecond // 1000:03d}Z"
        assert format_us_exact(us) == exact.strftime("%Y-%m-%dT%H:%M:%S.") + f"{exact.microsecond:06d}Z"


# -- the click's key and flags: the fast forms say what the plain definitions say -------------------
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from shopstream.engine import schema  # noqa: E402
from shopstream.engine.batch import click_key  # noqa: E402


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_click_key_is_eight_six_bit_characters_most_significant_first(fp):
    assert click_key(fp) == "".join(chr(48 + (fp >> shift & 63)) for shift in (42, 36, 30, 24, 18, 12, 6, 0))


def _plain_flags(event_type, page_url, properties, user_agent):
    """flags_of as first written: substring tests of the lower-cased text, one part at a time."""
    flags, props = 0, properties or {}
    entry = props.get("entry_point") or props.get("referrer")
    if event_type in schema.INTENT_TYPES or (isinstance(entry, str) and entry.lower() in schema.INTENT_ENTRIES) \
            or (page_url and any(part in page_url.lower() for part in schema.INTENT_URL_PARTS)):
        flags |= schema.INTENT
    if event_type in schema.FAILED_LOGIN_TYPES:
        flags |= schema.FAILED_LOGIN
    elif event_type == "login":
        result = props.get("result", props.get("status", props.get("success")))
        if result is False or (isinstance(result, str) and result.lower() in schema.FAILED_RESULTS):
            flags |= schema.FAILED_LOGIN
    if user_agent and any(marker in user_agent.lower() for marker in schema.AUTOMATION_AGENTS):
        flags |= schema.AUTOMATION
    return flags


_parts = st.sampled_from(schema.INTENT_URL_PARTS + schema.AUTOMATION_AGENTS + ("/p/1", "Mozilla/5.0", "İ", "K", "ß"))
_text = st.lists(st.one_of(_parts, _parts.map(str.upper), st.text(max_size=6)), max_size=4).map("".join)


@hsettings(max_examples=400)
@given(st.sampled_from(("page_view", "login", "reorder", "login_failed")), st.one_of(st.none(), _text),
       st.one_of(st.none(), st.fixed_dictionaries({"entry_point": st.sampled_from(("push", "Search", "EMAIL"))})),
       st.one_of(st.none(), _text))
def test_flags_of_says_what_the_plain_substring_tests_say(event_type, page_url, properties, user_agent):
    assert schema.flags_of(event_type, page_url, properties, user_agent) == \
        _plain_flags(event_type, page_url, properties, user_agent)
