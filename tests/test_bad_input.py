"""Bad input never crashes a consumer, is never lost, and never escapes its partition's keys.

Every record is either applied or in the dead-letter stream with a readable reason (hand-written
corpus + property-based records from hypothesis).
"""

from __future__ import annotations

import time

import msgspec
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from redis.crc import key_slot

from shopstream.engine import control, export
from shopstream.engine.producer import publish
from shopstream.engine.schema import BadRecord, parse_click

from .helpers import consume_all

NOW = time.time_ns() // 1000
GOOD = {"user_id": "u1", "event_type": "page_view", "timestamp": "2026-11-02T10:00:00Z"}

CORPUS = [
    b"", b" ", b"{", b"}", b"null", b"[]", b"42", b'"str"', b"\xff\xfe\x00", b"{}",
    msgspec.json.encode({**GOOD, "user_id": None}),
    msgspec.json.encode({**GOOD, "user_id": ""}),
    msgspec.json.encode({**GOOD, "user_id": "x" * 10_000}),                  # 10 kB id
    msgspec.json.encode({**GOOD, "user_id": "{0}"}),
    msgspec.json.encode({**GOOD, "user_id": "a}{b:*?[x]\\"}),
    msgspec.json.encode({**GOOD, "user_id": "new\nline \t tab"}),
    msgspec.json.encode({**GOOD, "user_id": "ünï©ødé 🛒"}),
    msgspec.json.encode({**GOOD, "user_id": 10**30}),                         # huge number
    msgspec.json.encode({**GOOD, "event_type": ""}),
    msgspec.json.encode({**GOOD, "event_type": 7}),
    msgspec.json.encode({**GOOD, "event_type": "x" * 1000}),
    msgspec.json.encode({**GOOD, "timestamp": "2026-11-02T12:00:00+02:00"}),  # offset -> UTC
    msgspec.json.encode({**GOOD, "timestamp": 1793613600000}),                # epoch ms
    msgspec.json.encode({**GOOD, "timestamp": "2026-11-02T10:00:00"}),        # naive
    msgspec.json.encode({**GOOD, "timestamp": "1969-07-20T20:17:40Z"}),       # pre-1970
    msgspec.json.encode({**GOOD, "timestamp": "3026-01-01T00:00:00Z"}),       # far future
    msgspec.json.encode({**GOOD, "timestamp": -1}),
    msgspec.json.encode({**GOOD, "timestamp": 1e300}),
    msgspec.json.encode({**GOOD, "timestamp": ""}),
    b'{"user_id": "u1", "event_type": "x", "timestamp": NaN}',
    b'{"user_id": "u1", "user_id": "u2", "event_type": "x", "timestamp": 1793613600000}',   # duplicate key
    msgspec.json.encode({**GOOD, "properties": {"blob": "x" * 1_000_000}}),   # 1 MB payload
    msgspec.json.encode({**GOOD, "schema_version": 99}),
    msgspec.json.encode({**GOOD, "schema_version": "1"}),
    msgspec.json.encode({**GOOD, "unknown": [1, {"deep": None}]}),
]


async def test_hand_written_corpus(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, CORPUS, settings)
    await consume_all(backend, settings)
    state = await control.group_state(backend.aio, settings, list(range(settings.partitions)))
    assert all(pending == 0 and lag == 0 for pending, lag in state.values())   # nothing stuck
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    applied = sum(s["event_count"] for s in out.sessions) + len(out.late)
    assert applied + len(out.dlq) == len(CORPUS)                              # nothing lost
    assert all(d["reason"] and len(d["reason"]) < 300 for d in out.dlq)
    ids = {s["user_id"] for s in out.sessions}
    assert {"{0}", "a}{b:*?[x]\\", "new\nline \t tab", "ünï©ødé 🛒", "u1"} <= ids
    prefix = f"{settings.namespace}:".encode()
    async for key in backend.aio.scan_iter(count=1000):
        assert key.startswith(prefix), key                                   # nothing outside the namespace
        if key.startswith(prefix + b"{"):
            tag = key[len(prefix) + 1:key.index(b"}")]
            assert key_slot(key) == key_slot(b"{" + tag + b"}")              # the first tag is the partition's


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
records = st.fixed_dictionaries({}, optional={
    "user_id": st.one_of(st.text(max_size=40), st.integers(), json_values),
    "event_type": st.one_of(st.text(max_size=20), json_values),
    "timestamp": st.one_of(st.integers(-2**63, 2**63), st.floats(allow_nan=False), st.text(max_size=40),
                           st.datetimes().map(lambda d: d.isoformat()), json_values),
    "schema_version": st.one_of(st.integers(), json_values),
    "properties": json_values,
})


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_any_record_is_either_parsed_or_rejected_with_a_reason(record):
    raw = msgspec.json.encode(record)
    try:
        click = parse_click(raw, NOW, 86_400_000_000, 256)
    except BadRecord as exc:
        assert str(exc)
        return
    assert click.user_id and len(click.user_id.encode()) <= 256 and click.event_type
    assert 0 <= click.ts_us <= NOW + 86_400_000_000


@hsettings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_either_parsed_or_rejected(raw):
    try:
        parse_click(raw, NOW, 86_400_000_000, 256)
    except BadRecord as exc:
        assert str(exc)


async def test_a_random_mix_of_fields_never_crashes_the_consumer(backend, settings):
    import random
    rng = random.Random(5)
    pools = {"user_id": ["u1", "", None, 7, "{x}", "ü", "x" * 300, [1]],
             "event_type": ["view", "", 3, None, "a:b|c", {"k": 1}],
             "timestamp": ["2026-11-02T10:00:00Z", 1793613600000, "bad", -5, None, 1.5e12, "2026-11-02 10:00:01 UTC"]}
    rows = []
    for _ in range(120):
        doc = {k: rng.choice(v) for k, v in pools.items() if rng.random() < 0.9}
        rows.append(msgspec.json.encode(doc))
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, rows, settings)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert sum(s["event_count"] for s in out.sessions) + len(out.late) + len(out.dlq) == len(rows)


async def test_bad_transactions_and_tickets_go_to_the_dead_letter_stream(backend, settings):
    """The other sources' bad records: dead-lettered with the reason, the rest applied, nothing stuck."""
    import random
    from shopstream.engine.keys import SUPPORT, TX
    rng = random.Random(11)
    tx_pools = {"transaction_id": ["t", "", 5, None], "user_id": ["u1", "", "{x}", None, "x" * 300],
                "amount": ["9.99", "1.005", "abc", -1, 3, None], "status": ["failed", "completed", "pending", 1],
                "currency": ["USD", "dollars", "", "JPY"], "timestamp": ["2026-11-02T10:00:00Z", "bad", 1793613600000],
                "card_fingerprint": ["fp", "", None, "x" * 300], "ip": ["10.0.0.1", "", None]}
    tk_pools = {"ticket_id": ["k", "", 3], "user_id": ["u1", "", None], "status": ["open", "resolved", 4],
                "created_at": ["2026-11-02T10:00:00Z", "later", None]}
    good_tx = {k: v[0] for k, v in tx_pools.items()}
    txs = [msgspec.json.encode({k: rng.choice(v) for k, v in tx_pools.items() if rng.random() < 0.9}) for _ in range(80)]
    txs += [msgspec.json.encode({**good_tx, "transaction_id": f"good-{i}"}) for i in range(3)]
    tickets = [msgspec.json.encode({k: rng.choice(v) for k, v in tk_pools.items() if rng.random() < 0.9})
               for _ in range(40)] + [b"not json", b"[]", msgspec.json.encode({k: v[0] for k, v in tk_pools.items()})]
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, txs + [b"{", b"null"], settings, TX)
    publish(backend.sync, tickets, settings, SUPPORT)
    await consume_all(backend, settings)
    state = await control.group_state(backend.aio, settings, list(range(settings.partitions)))
    assert all(pending == 0 and lag == 0 for pending, lag in state.values())
    counters = {k: 0 for k in ("applied", "duplicates")}
    for part in range(settings.partitions):
        values = await backend.aio.hmget(f"{settings.namespace}:{{{part}}}:state", *counters)
        for k, v in zip(list(counters), values):
            counters[k] += int(v or 0)
    out = await export.collect(backend.aio, settings)
    assert counters["applied"] + counters["duplicates"] + len(out.dlq) == len(txs) + 2 + len(tickets)
    assert counters["applied"] >= 4 and all(d["reason"] for d in out.dlq)     # the good ones at least
    assert {d["stream"].rsplit(":", 1)[1] for d in out.dlq} == {"tx", "support"}
